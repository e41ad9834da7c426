//! A small stderr logger: UTC timestamp, level, message. `SKIFF_LOG` sets the level
//! (error, warn, info, debug, trace, or off; default info; any other value is warned
//! about and means info).

use std::io::Write;
use std::time::SystemTime;

/// Prepended to every line (the node id), so nodes sharing a terminal can be told apart.
static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the line prefix (once).
pub fn set_prefix(p: String) {
    let _ = PREFIX.set(p);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

struct Logger {
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let (secs, ms) = (now.as_secs(), now.subsec_millis());
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let prefix = PREFIX.get().map(String::as_str).unwrap_or("");
        let line = format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z {:<5} {prefix}{}\n",
            r.level(),
            r.args()
        );
        // One write per line keeps lines whole when threads log together.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The values `SKIFF_LOG` accepts (case-insensitive).
pub const LEVELS: &str = "error, warn, info, debug, trace, off";

/// The level `SKIFF_LOG` names: unset or empty is info; `None` for anything else.
pub fn parse_level(value: &str) -> Option<log::LevelFilter> {
    Some(match value.trim().to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "" | "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        "off" => log::LevelFilter::Off,
        _ => return None,
    })
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let value = std::env::var("SKIFF_LOG").unwrap_or_default();
    let level = parse_level(&value).unwrap_or_else(|| {
        // Said whatever the level: a typo must not silently change what is logged.
        eprintln!("skiff: SKIFF_LOG={value:?} is not a log level (accepted: {LEVELS}); logging at info");
        log::LevelFilter::Info
    });
    if log::set_boxed_logger(Box::new(Logger { level })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::{civil_from_days, parse_level};

    #[test]
    fn log_levels() {
        assert_eq!(parse_level(""), Some(log::LevelFilter::Info));
        assert_eq!(parse_level("DEBUG"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level("off"), Some(log::LevelFilter::Off));
        assert_eq!(parse_level("verbose"), None);
        assert_eq!(parse_level("warning"), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
