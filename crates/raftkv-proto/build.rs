//! Generates the gRPC code from `proto/` with protox (a pure-Rust protobuf compiler), so the
//! build needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not compiled in: a build script reused from another checkout of the
    // same tree (a shared target dir) must still find this checkout's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["raftkv/v1/kv.proto", "raftkv/v1/raft.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    // The descriptor set, for gRPC server reflection.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("raftkv_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;

    // etcd's v3 API (packages etcdserverpb, mvccpb, authpb), served on a node's second port.
    let etcd_root = root.join("etcd");
    let etcd_files = ["etcdserverpb/rpc.proto", "mvccpb/kv.proto", "authpb/auth.proto"];
    for f in &etcd_files {
        println!("cargo:rerun-if-changed={}", etcd_root.join(f).display());
    }
    let etcd_fds = protox::compile(etcd_files, [&etcd_root])?;
    std::fs::write(
        out.join("etcd_descriptor.bin"),
        prost::Message::encode_to_vec(&etcd_fds),
    )?;
    tonic_prost_build::configure().compile_fds(etcd_fds)?;
    Ok(())
}
