//! One pipeline per command, each reading top-down from its options to the parts it runs.

pub mod bench;
pub mod download;
pub mod pca;
pub mod predict;
pub mod quantize;
pub mod run;
pub mod sql;
pub mod train;
pub mod upload;
