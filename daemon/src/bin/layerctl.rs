fn main() -> std::process::ExitCode {
    daemon::cli::main()
}
