//! The lab model: lab files (YAML, merged in order, with includes) turned into a validated [`Lab`].
//!
//! Everything that reaches a shell command or a path is validated here, at load time, with the
//! file and line it came from. Later crates may trust a [`Lab`].

pub mod addr;
mod emit;
mod error;
mod links;
mod load;
mod model;
pub mod names;
mod resolve;
mod schema;
mod select;
pub mod tree;

pub use emit::to_yaml;
pub use error::{Hint, ModelError};
pub use load::{load, load_fleet, merged_tree};
pub use model::{
    Hypervisor, Interface, Lab, LabNode, Overlay, Proto, SnapshotSpec, Storage, Transport,
    origin_of,
};
pub use tree::{Origin, Tree};
