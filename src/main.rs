fn main() {
    std::process::exit(xpf::cli::main());
}
