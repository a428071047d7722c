//! [`LoadedSkel`]: a libbpf-rs skeleton together with the heap storage it
//! borrows.
//!
//! libbpf-rs skeletons borrow the `MaybeUninit<OpenObject>` they were opened
//! into. `LoadedSkel` owns that storage on the heap next to the skeleton,
//! hands the skeleton a `'static` borrow of it, and frees it only after the
//! skeleton is gone. Invariant: the `'static` borrows inside a skeleton never
//! leave [`programs`](super) (callers get `&self`-bounded access through
//! methods).

use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::NonNull;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use super::ProgramError;

/// A loaded skeleton together with the heap storage it borrows.
pub(super) struct LoadedSkel<S> {
    skel: ManuallyDrop<S>,
    /// Allocated by `Box` in `open_load`; the skeleton holds a `'static`
    /// borrow of it, so it is freed only in `Drop`, after the skeleton.
    storage: NonNull<MaybeUninit<OpenObject>>,
}

impl<S> LoadedSkel<S> {
    /// Opens the skeleton `builder` makes, lets `configure` set its rodata,
    /// and loads it.
    pub(super) fn open_load<B, O>(
        program: &'static str,
        builder: B,
        configure: impl FnOnce(&mut O) -> Result<(), ProgramError>,
    ) -> Result<Self, ProgramError>
    where
        B: SkelBuilder<'static, Output = O>,
        O: OpenSkel<'static, Output = S>,
    {
        let storage = NonNull::from(Box::leak(Box::new(MaybeUninit::<OpenObject>::uninit())));
        // SAFETY: `storage` is a fresh allocation nobody else references; the
        // skeleton made from this borrow is dropped before it is freed (in
        // `Drop`, or below when opening or loading fails).
        let object: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *storage.as_ptr() };
        let loaded = builder
            .open(object)
            .map_err(|source| ProgramError::Open { program, source })
            .and_then(|mut open| {
                configure(&mut open)?;
                open.load()
                    .map_err(|source| ProgramError::Load { program, source })
            });
        match loaded {
            Ok(skel) => Ok(Self {
                skel: ManuallyDrop::new(skel),
                storage,
            }),
            Err(e) => {
                // SAFETY: the open or half-loaded skeleton was dropped inside
                // the chain above, closing the object it had written there;
                // no borrow of `storage` is left.
                drop(unsafe { Box::from_raw(storage.as_ptr()) });
                Err(e)
            }
        }
    }
}

impl<S> std::ops::Deref for LoadedSkel<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.skel
    }
}

impl<S> Drop for LoadedSkel<S> {
    fn drop(&mut self) {
        // SAFETY: `skel` is dropped exactly once, here; it closes the object
        // living in `storage` before that memory is freed on the next line.
        unsafe { ManuallyDrop::drop(&mut self.skel) };
        // SAFETY: `storage` came from `Box::leak` in `open_load` and its only
        // borrower, the skeleton, is gone.
        drop(unsafe { Box::from_raw(self.storage.as_ptr()) });
    }
}

// SAFETY: `storage` is only touched in `Drop`, after the skeleton is gone;
// everything else reachable is the skeleton, whose own Send/Sync decide.
unsafe impl<S: Send> Send for LoadedSkel<S> {}
// SAFETY: as above; `&LoadedSkel` gives access to nothing but `&S`.
unsafe impl<S: Sync> Sync for LoadedSkel<S> {}
