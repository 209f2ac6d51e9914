fn main() -> std::process::ExitCode {
    daemon::server::main()
}
