//! The culvert binary; everything lives in the library so the tests can reach it.

fn main() -> std::process::ExitCode {
    culvert::main()
}
