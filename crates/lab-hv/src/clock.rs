//! Who and when: the owner `lab` records on what it makes, and times in UTC.

/// `user@controller`, recorded as the owner of what `lab` makes. Only letters, digits and
/// `.-_+@` are kept (anything else becomes `_`): a tab or newline from `$USER` would make the
/// probe's rows, and so the hypervisor, unreadable for every lab (review 3, N17).
pub fn owner() -> String {
    plain(&raw_owner())
}

fn plain(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn raw_owner() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(user_from_uid);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{user}@{host}")
}

/// The login name of this process's uid, from /etc/passwd (cron may set no $USER).
fn user_from_uid() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .and_then(|r| r.split_whitespace().next().map(str::to_owned))
            })
        });
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    uid.and_then(|uid| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid).then(|| f[0].to_owned())
        })
    })
    .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
#[test]
fn an_owner_keeps_no_tab_or_newline() {
    assert_eq!(plain("ops\tx\n@ctl 1"), "ops_x_@ctl_1");
    assert_eq!(plain("a.b-c+d_e@h-1.example"), "a.b-c+d_e@h-1.example");
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from a day count (Howard Hinnant's algorithm), years 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
