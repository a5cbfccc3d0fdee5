//! The `model-pruner` binary: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    model_pruner::cli::main()
}
