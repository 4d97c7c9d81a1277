//! The fleet's `proto:` section: where the proto is updated, and how it is replicated.

use crate::error::{Hint, ModelError};
use crate::model::{Hypervisor, Proto, Transport};
use crate::names;
use crate::resolve::{name_ok, path_of, schema_error};
use crate::schema::ProtoSchema;
use crate::tree::Tree;

pub(crate) fn resolve_proto(
    root: &Tree,
    p: ProtoSchema,
    hypervisors: &[Hypervisor],
) -> Result<Proto, ModelError> {
    if !hypervisors.iter().any(|h| h.name == p.source) {
        return Err(schema_error(
            root,
            &path_of(&["proto", "source"]),
            format!("hypervisor `{}` is not defined", p.source),
            Hint::closest(&p.source, hypervisors.iter().map(|h| h.name.as_str())),
        ));
    }
    if let Some(d) = &p.domain {
        name_ok(root, &["proto", "domain"], d, "domain name", names::ident)?;
    }
    name_ok(
        root,
        &["proto", "pattern"],
        &p.pattern,
        "snapshot pattern",
        names::snapshot_pattern,
    )?;
    if p.keep == 0 {
        return Err(schema_error(
            root,
            &path_of(&["proto", "keep"]),
            "keep must be at least 1: the newest release is what labs clone".to_owned(),
            Hint::default(),
        ));
    }
    match (&p.zrepl_job, p.transport) {
        (Some(job), _) => name_ok(
            root,
            &["proto", "zrepl_job"],
            job,
            "zrepl job",
            names::ident,
        )?,
        (None, Transport::Zrepl) => {
            return Err(schema_error(
                root,
                &path_of(&["proto", "transport"]),
                "transport `zrepl` needs `zrepl_job`: the job to wake on each target".to_owned(),
                Hint::default(),
            ));
        }
        (None, _) => {}
    }
    if let Some(rate) = &p.bwlimit {
        name_ok(root, &["proto", "bwlimit"], rate, "rate", names::rate)?;
    }
    if p.zrepl_wait > 86_400 {
        return Err(schema_error(
            root,
            &path_of(&["proto", "zrepl_wait"]),
            "zrepl_wait is at most 86400 seconds (a day)".to_owned(),
            Hint::default(),
        ));
    }
    if p.parallel == 0 || p.parallel > 64 {
        return Err(schema_error(
            root,
            &path_of(&["proto", "parallel"]),
            "parallel must be between 1 and 64 targets at once".to_owned(),
            Hint::default(),
        ));
    }
    Ok(Proto {
        compressed: p.compressed,
        parallel: p.parallel,
        bwlimit: p.bwlimit,
        zrepl_wait: p.zrepl_wait,
        source: p.source,
        domain: p.domain,
        pattern: p.pattern,
        keep: p.keep,
        transport: p.transport,
        zrepl_job: p.zrepl_job,
    })
}
