//! What `keywardd --check-config` prints, and what the ready banner adds:
//! the config file in use, the hooks, the alert sinks, the metrics listener
//! and the rotation schedules. Never a secret: sink URLs and tokens are not
//! shown, only each sink's name and kind.

use keyward::agent::config_reload::ConfigSource;
use keyward::config::Config;

/// The config file in use ("none (dev mode defaults)" without one).
pub fn config_file(source: &ConfigSource) -> String {
    match source {
        ConfigSource::File(path) => path.display().to_string(),
        ConfigSource::Dev { file: Some(path), .. } => path.display().to_string(),
        ConfigSource::Dev { file: None, .. } => "none (dev mode defaults)".to_owned(),
    }
}

/// The metrics listener, or "off".
pub fn metrics(config: &Config) -> String {
    config
        .metrics_listen
        .as_ref()
        .map_or_else(|| "off".to_owned(), ToString::to_string)
}

/// The lines `--check-config` prints after its first.
pub fn lines(config: &Config, source: &ConfigSource) -> Vec<String> {
    let mut out = vec![
        format!("config file: {}", config_file(source)),
        format!("metrics listener: {}", metrics(config)),
    ];
    let sinks: Vec<String> = config
        .alerts
        .sinks
        .iter()
        .map(|s| format!("{} ({})", s.name, s.kind.as_str()))
        .collect();
    out.push(format!(
        "alert sinks: {}",
        if sinks.is_empty() {
            "none (alerts go to the log)".to_owned()
        } else {
            sinks.join(", ")
        }
    ));
    let defaults = &config.rotation.defaults.schedule;
    if defaults.schedules() {
        out.push(format!("schedule [rotation]: {}", parts(defaults)));
    }
    for (env, e) in &config.environments {
        if e.schedule.every.is_some() || e.schedule.window.is_some() || e.schedule.jitter.is_some() {
            out.push(format!("schedule [environments.{env}]: {}", parts(&e.schedule)));
        }
    }
    if config.rotation.keys.is_empty() {
        out.push("hooks: none ([[key]] entries set them)".to_owned());
    }
    for entry in &config.rotation.keys {
        let keys: Vec<String> = entry.keys.iter().map(ToString::to_string).collect();
        let hook = |name: &str, h: &Option<keyward::config::hooks::HookCommand>| {
            h.as_ref().map(|h| format!("{name} {}", h.argv.join(" ")))
        };
        let hooks: Vec<String> = [
            hook("generator", &entry.generator),
            hook("validator", &entry.validator),
            hook("revoker", &entry.revoker),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut line = format!(
            "[[key]] {} ({}): hooks {}",
            keys.join(", "),
            entry.origin,
            if hooks.is_empty() {
                "none".to_owned()
            } else {
                hooks.join("; ")
            }
        );
        if entry.schedule.every.is_some() || entry.schedule.window.is_some() || entry.schedule.jitter.is_some() {
            line.push_str(&format!("; schedule {}", parts(&entry.schedule)));
        }
        out.push(line);
    }
    out
}

/// `every 30days, window Mon-Fri 09:00-16:00, jitter 2h` as set at one
/// level (what it leaves out comes from below).
fn parts(p: &keyward::config::ScheduleParts) -> String {
    let mut out = Vec::new();
    match p.every {
        Some(Some(every)) => out.push(format!("every {}", humantime::format_duration(every))),
        Some(None) => out.push("every off".to_owned()),
        None => {}
    }
    if let Some(w) = &p.window {
        out.push(format!("window {w}"));
    }
    if let Some(j) = p.jitter {
        out.push(format!("jitter {}", humantime::format_duration(j)));
    }
    out.join(", ")
}
