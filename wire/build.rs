//! Compiles `proto/**/*.proto` with protox (pure Rust), so no `protoc` is needed on any machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/homeport/v1/queue.proto",
        "proto/homeport/v1/change.proto",
        "proto/homeport/v1/store.proto",
        "proto/homeport/v1/gateway.proto",
        "proto/homeport/v1/registry.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
