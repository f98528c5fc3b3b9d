//! The `homeport` program, for tests and benchmarks that spawn real processes.
fn main() -> std::process::ExitCode {
    homeport::main()
}
