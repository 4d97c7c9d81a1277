//! A lab as other tools read it, from the lab files alone (no hypervisor is asked): inventories
//! for ssh, Ansible, `/etc/hosts` and scripts ([`inventory`]), and the topology as a graph
//! ([`graph`]). Everything here is a pure function of the model: deterministic text.

mod graph;
mod inventory;

pub use graph::{GraphFormat, graph};
pub use inventory::{InventoryFormat, inventory};
