//! The `dtx` binary: see `dtx --help` and `dtx_node::cli`.

fn main() -> std::process::ExitCode {
    dtx_node::cli::main()
}
