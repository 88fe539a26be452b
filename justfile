# Recipes for the harness. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Run experiments (a stage already completed anywhere in results/ is reused)
sweep +files:
    cargo run --release -- sweep {{files}}

# Run one experiment
run file *flags:
    cargo run --release -- run {{file}} {{flags}}

# Print what a sweep would do without running it
plan +files:
    cargo run --release -- sweep --dry-run {{files}}

# Compare runs side by side
compare a b *more:
    cargo run --release -- compare {{a}} {{b}} {{more}}

# List runs
ls *flags:
    cargo run --release -- ls {{flags}}

# The test suite (what CI runs)
test:
    cargo test --release

# The demo: the synthetic world, then the demo sweep on the CPU
demo:
    cargo run --release -- synth --out data/synth
    cargo run --release -- sweep experiments/*.toml

# Format, lint, and check the CUDA build
check:
    cargo fmt --check
    cargo clippy --release --all-targets -- -D warnings
    cargo check --release --features cuda
