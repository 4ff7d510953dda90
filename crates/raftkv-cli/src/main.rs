//! raftkv: the command-line tool. All logic lives in the raftkv-cli library.

fn main() -> std::process::ExitCode {
    raftkv_cli::main()
}
