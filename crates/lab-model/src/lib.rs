//! The lab model: lab files (YAML, merged in order, with includes) turned into a validated [`Lab`].
//!
//! Everything that reaches a shell command or a path is validated here, at load time, with the
//! file and line it came from. Later crates may trust a [`Lab`].

pub mod addr;
mod emit;
mod error;
pub mod impair;
mod links;
mod load;
mod mgmt;
mod model;
pub mod names;
mod proto;
mod resolve;
mod schema;
mod select;
mod start;
pub mod tree;
mod validate;
pub mod xml;

/// The XML namespace of the marks `lab` puts into the libvirt domains and networks it defines.
/// Overlay templates must not use it: the mark is `lab`'s alone.
pub const LAB_XML_NS: &str = "https://lab.invalid/schema/1";

pub use emit::to_yaml;
pub use error::{Hint, ModelError};
pub use load::{load, load_fleet, merged_tree};
pub use model::{
    Hypervisor, Interface, InterfaceKind, Lab, LabNode, MgmtMode, MgmtNetwork, NodeSsh, Overlay,
    Proto, SnapshotSpec, Storage, Transport, Wire, origin_of,
};
pub use tree::{Origin, Tree};
pub use validate::Check;
