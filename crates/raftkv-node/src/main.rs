//! raftkvd: one node of a raftkv cluster. All logic lives in the raftkv-node library.

fn main() -> std::process::ExitCode {
    raftkv_node::daemon::main()
}
