//! The `warden` binary: a shim over the `warden` crate, owned by the root package so that
//! end-to-end tests in `tests/` can find the freshly built binary (see ARCHITECTURE.md).
fn main() -> std::process::ExitCode {
    warden::main()
}
