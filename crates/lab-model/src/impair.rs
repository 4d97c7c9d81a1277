//! A link direction's impairment: delay with jitter, loss, duplication, reordering and a rate,
//! in the words network engineers know from netem (`50ms`, `1%`, `10mbit`), and the relay's
//! own arguments for it (whole numbers: microseconds, parts per million, bits per second).

use std::fmt;

/// How one direction of a link is impaired; all zero is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Impairment {
    pub delay_us: u64,
    pub jitter_us: u64,
    /// Per million frames.
    pub loss_ppm: u32,
    pub duplicate_ppm: u32,
    /// A reordered frame skips the delay (so it overtakes the ones before it), as in netem.
    pub reorder_ppm: u32,
    /// Bits per second; 0 is no limit.
    pub rate_bps: u64,
}

/// The relay's flags, in the order it is given them.
const FLAGS: [&str; 6] = [
    "--delay-us",
    "--jitter-us",
    "--loss-ppm",
    "--duplicate-ppm",
    "--reorder-ppm",
    "--rate-bps",
];

impl Impairment {
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }

    fn values(&self) -> [u64; 6] {
        [
            self.delay_us,
            self.jitter_us,
            u64::from(self.loss_ppm),
            u64::from(self.duplicate_ppm),
            u64::from(self.reorder_ppm),
            self.rate_bps,
        ]
    }

    /// The relay's arguments: each value that is not zero, as `--flag N`.
    pub fn relay_args(&self) -> Vec<String> {
        FLAGS
            .iter()
            .zip(self.values())
            .filter(|(_, v)| *v != 0)
            .flat_map(|(f, v)| [(*f).to_owned(), v.to_string()])
            .collect()
    }

    /// Reads [`Impairment::relay_args`] back (words after them are ignored); `None` when a
    /// flag's value is not a number.
    pub fn from_relay_args(words: &[&str]) -> Option<Impairment> {
        let mut how = Impairment::default();
        let mut it = words.iter();
        while let Some(w) = it.next() {
            let Some(i) = FLAGS.iter().position(|f| f == w) else {
                continue;
            };
            let v: u64 = it.next()?.parse().ok()?;
            let ppm = || u32::try_from(v).ok().filter(|p| *p <= 1_000_000);
            match i {
                0 => how.delay_us = v,
                1 => how.jitter_us = v,
                2 => how.loss_ppm = ppm()?,
                3 => how.duplicate_ppm = ppm()?,
                4 => how.reorder_ppm = ppm()?,
                _ => how.rate_bps = v,
            }
        }
        Some(how)
    }
}

/// `50ms`, `1.5ms`, `2s`, `500us`, `0`: microseconds (at most an hour).
pub fn duration_us(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a time like 20ms, 1.5ms, 1s or 500us");
    let (number, unit) = split_unit(s);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "" if number.parse::<f64>().ok() == Some(0.0) => 1.0,
        _ => return Err(bad()),
    };
    let v = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !(0.0..=3.6e9).contains(&v) {
        return Err(format!("`{s}` is not between 0 and an hour"));
    }
    Ok(v.round() as u64)
}

/// `1%`, `0.5%`, `100%`: parts per million.
pub fn percent_ppm(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not a percentage like 1%, 0.5% or 100%");
    let number = s.strip_suffix('%').ok_or_else(bad)?;
    let v: f64 = number.parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("`{s}` is not between 0% and 100%"));
    }
    Ok((v * 10_000.0).round() as u32)
}

/// `10mbit`, `1gbit`, `512kbit`, `64000bit` (tc's words): bits per second.
pub fn rate_bps(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a rate like 10mbit, 1gbit or 512kbit");
    let (number, unit) = split_unit(s);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad()),
    };
    let v = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !(8000.0..=1e11).contains(&v) {
        return Err(format!("`{s}` is not between 8kbit and 100gbit"));
    }
    Ok(v.round() as u64)
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s.split_at(at)
}

fn time(us: u64) -> String {
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{}ms", us as f64 / 1000.0)
    }
}

fn percent(ppm: u32) -> String {
    format!("{}%", f64::from(ppm) / 10_000.0)
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.delay_us > 0 || self.jitter_us > 0 {
            let mut d = format!("delay {}", time(self.delay_us));
            if self.jitter_us > 0 {
                d.push_str(&format!(" ±{}", time(self.jitter_us)));
            }
            parts.push(d);
        }
        for (word, ppm) in [
            ("loss", self.loss_ppm),
            ("duplicate", self.duplicate_ppm),
            ("reorder", self.reorder_ppm),
        ] {
            if ppm > 0 {
                parts.push(format!("{word} {}", percent(ppm)));
            }
        }
        if self.rate_bps > 0 {
            let r = self.rate_bps;
            parts.push(if r.is_multiple_of(1_000_000_000) {
                format!("rate {}gbit", r / 1_000_000_000)
            } else if r.is_multiple_of(1_000_000) {
                format!("rate {}mbit", r / 1_000_000)
            } else if r.is_multiple_of(1000) {
                format!("rate {}kbit", r / 1000)
            } else {
                format!("rate {r}bit")
            });
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_numbers_both_ways() {
        assert_eq!(duration_us("50ms"), Ok(50_000));
        assert_eq!(duration_us("1.5ms"), Ok(1_500));
        assert_eq!(duration_us("2s"), Ok(2_000_000));
        assert_eq!(duration_us("0"), Ok(0));
        assert!(duration_us("50").is_err() && duration_us("-1ms").is_err());
        assert_eq!(percent_ppm("0.5%"), Ok(5_000));
        assert!(percent_ppm("101%").is_err() && percent_ppm("1").is_err());
        assert_eq!(rate_bps("10mbit"), Ok(10_000_000));
        assert!(rate_bps("10mb").is_err());
        let how = Impairment {
            delay_us: 20_000,
            jitter_us: 2_500,
            loss_ppm: 10_000,
            rate_bps: 10_000_000,
            ..Impairment::default()
        };
        assert_eq!(how.to_string(), "delay 20ms ±2.5ms, loss 1%, rate 10mbit");
        let args = how.relay_args();
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(Impairment::from_relay_args(&words), Some(how));
        assert_eq!(Impairment::default().to_string(), "none");
    }
}
