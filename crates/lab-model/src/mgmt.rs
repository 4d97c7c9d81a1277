//! A hypervisor's management network: lab's own (isolated, NAT, or bridged onto a host
//! bridge), an operator's existing one, or none.

use crate::error::{Hint, ModelError};
use crate::model::{MgmtMode, MgmtNetwork};
use crate::names;
use crate::resolve::{name_ok, path_of, schema_error};
use crate::schema::{HypervisorSchema, LabSchema};
use crate::tree::Tree;

/// A hypervisor's management network. Without `mgmt:`, a hypervisor with `mgmt_ipv4` gets an
/// isolated network of the lab's own, and one without gets no management NIC.
pub(crate) fn resolve_mgmt(
    root: &Tree,
    hv: &str,
    s: &HypervisorSchema,
    lab: &LabSchema,
) -> Result<MgmtNetwork, ModelError> {
    let at = |field: &str| path_of(&["hypervisors", hv, "mgmt", field]);
    let fail = |field: &str, message: String| {
        Err(schema_error(root, &at(field), message, Hint::default()))
    };
    let (mode, bridge, network, gateway, reserve) = match &s.mgmt {
        None => (None, None, None, None, None),
        Some(m) => (
            m.mode,
            m.bridge.clone(),
            m.network.clone(),
            m.gateway,
            m.reserve,
        ),
    };
    let mode = mode.unwrap_or(match (&network, &bridge, s.mgmt_ipv4) {
        (Some(_), _, _) => MgmtMode::Existing,
        (None, Some(_), _) => MgmtMode::Bridge,
        (None, None, Some(_)) => MgmtMode::Isolated,
        (None, None, None) => MgmtMode::None,
    });
    let own = format!("lab-{}", lab.name);
    if network.is_some() && mode != MgmtMode::Existing {
        return fail(
            "network",
            "`network` names an existing network: it needs mode `existing`".to_owned(),
        );
    }
    if bridge.is_some() && mode != MgmtMode::Bridge {
        return fail(
            "bridge",
            "`bridge` is the host bridge of mode `bridge`".to_owned(),
        );
    }
    if gateway.is_some() && !matches!(mode, MgmtMode::Isolated | MgmtMode::Nat) {
        return fail(
            "gateway",
            format!(
                "`gateway` is the hypervisor's address on a network lab serves DHCP on \
                 (modes isolated and nat); in mode {} it is not lab's to choose",
                format!("{mode:?}").to_lowercase()
            ),
        );
    }
    if reserve == Some(true) && mode != MgmtMode::Existing {
        return fail(
            "reserve",
            format!(
                "`reserve` adds reservations to an operator's network (mode existing); in mode \
                 {} {}",
                format!("{mode:?}").to_lowercase(),
                if matches!(mode, MgmtMode::Isolated | MgmtMode::Nat) {
                    "lab's own network already has every node's reservation"
                } else {
                    "no DHCP is lab's to change"
                }
            ),
        );
    }
    let mut out = MgmtNetwork {
        mode,
        network: None,
        owned: false,
        bridge: None,
        gateway_ipv4: None,
        reserve: false,
        dhcp: false,
    };
    match mode {
        MgmtMode::None => {}
        MgmtMode::Existing => {
            let Some(network) = network else {
                return fail(
                    "mode",
                    "mode `existing` needs `network`: the operator's libvirt network".to_owned(),
                );
            };
            name_ok(
                root,
                &["hypervisors", hv, "mgmt", "network"],
                &network,
                "network name",
                names::network,
            )?;
            out.network = Some(network);
            // Reservations need planned addresses: on by default when there are some.
            out.reserve = match (reserve, s.mgmt_ipv4) {
                (Some(true), None) => {
                    return fail(
                        "reserve",
                        "`reserve` needs the hypervisor's `mgmt_ipv4`: the prefix of the \
                         operator's network, from which each node's address is planned"
                            .to_owned(),
                    );
                }
                (Some(r), _) => r,
                (None, planned) => planned.is_some(),
            };
            out.dhcp = out.reserve;
        }
        MgmtMode::Bridge => {
            let Some(bridge) = bridge else {
                return fail(
                    "mode",
                    "mode `bridge` needs `bridge`: the host bridge to forward onto".to_owned(),
                );
            };
            name_ok(
                root,
                &["hypervisors", hv, "mgmt", "bridge"],
                &bridge,
                "interface name",
                names::ifname,
            )?;
            out.network = Some(own);
            out.owned = true;
            out.bridge = Some(bridge);
        }
        MgmtMode::Isolated | MgmtMode::Nat => {
            let Some(prefix) = s.mgmt_ipv4 else {
                return fail(
                    "mode",
                    "a network lab serves DHCP on needs the hypervisor's `mgmt_ipv4`".to_owned(),
                );
            };
            let gateway = match gateway {
                None => crate::addr::last_host(prefix).map_err(|m| {
                    schema_error(
                        root,
                        &path_of(&["hypervisors", hv, "mgmt_ipv4"]),
                        m,
                        Hint::default(),
                    )
                })?,
                Some(g) => crate::addr::gateway(prefix, g.into())
                    .map_err(|m| schema_error(root, &at("gateway"), m, Hint::default()))?,
            };
            out.network = Some(own);
            out.owned = true;
            out.bridge = Some(format!("lab{}", lab.id));
            out.gateway_ipv4 = Some(gateway);
            out.dhcp = true;
        }
    }
    Ok(out)
}
