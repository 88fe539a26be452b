fn main() {
    harness::backend::tune_allocator();
    if let Err(e) = harness::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
