//! The `dtx` CLI, built into this package for its black-box tests.

fn main() -> std::process::ExitCode {
    dtx_cli::main()
}
