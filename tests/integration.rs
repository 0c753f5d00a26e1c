//! The integration tests, in one binary (DataFusion's `core_integration` pattern): every suite
//! is a module here and shares one `support` module, so the slow link of DataFusion and
//! Ballista happens once. The suites run the real binaries, engines and servers on the shared
//! sample data and model.
//!
//! Run one suite with `cargo test --release --workspace --test integration -- cluster::` (with
//! `-p fruits-tests` instead of `--workspace`, Cargo resolves other dependency features and
//! rebuilds DataFusion).

mod support;

mod auth;
mod classifier;
mod cluster;
mod codec;
mod compose;
mod embedded;
mod emr;
mod fidelity;
mod incremental;
mod pca;
mod quantize;
mod safety;
mod uploads;
