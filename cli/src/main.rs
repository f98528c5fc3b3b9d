fn main() -> std::process::ExitCode {
    homeport::main()
}
