//! The `dtx` binary: see `dtx --help`; everything is in the `dtx_cli` library.

fn main() -> std::process::ExitCode {
    dtx_cli::main()
}
