//! How the command line shows agents: the `get` table, `describe`'s text, a watch line,
//! and ages, all from the typed [`Agent`].

use crate::agent::{Agent, DesiredState, Timestamp};
use crate::wire::Event;

/// Agents as an aligned table (`-o wide` adds the owner, generations, when Hive stops or
/// deletes it, and the message).
pub fn table(items: &[Agent], wide: bool) -> String {
    let mut rows = vec![{
        let mut h = vec!["NAME", "STATE", "PHASE", "IMAGE", "RESTARTS", "AGE"];
        if wide {
            h.extend(["OWNER", "GENERATION", "STOPS-AT", "EXPIRES-AT", "MESSAGE"]);
        }
        h.into_iter().map(String::from).collect::<Vec<_>>()
    }];
    for a in items {
        let mut row = vec![
            a.metadata.name.clone(),
            state(a).into(),
            a.status.phase.to_string(),
            a.spec.image.clone(),
            a.status.restart_count.to_string(),
            age(a.metadata.creation_timestamp),
        ];
        if wide {
            row.push(a.metadata.owner.clone().unwrap_or_default());
            row.push(format!(
                "{}/{}",
                a.status.observed_generation, a.metadata.generation
            ));
            row.push(or_dash_time(a.status.stops_at));
            row.push(or_dash_time(a.status.expires_at));
            row.push(a.status.message.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        out += cells.join("   ").trim_end();
        out += "\n";
    }
    out
}

/// The header of `hive get -w`.
pub fn watch_header() -> String {
    format!(
        "{:<9} {:<24} {:<8} {:<11} RESTARTS",
        "EVENT", "NAME", "STATE", "PHASE"
    )
}

/// One line of `hive get -w`.
pub fn watch_line(kind: &str, a: &Agent) -> String {
    format!(
        "{:<9} {:<24} {:<8} {:<11} {}",
        kind,
        a.metadata.name,
        state(a),
        a.status.phase.to_string(),
        a.status.restart_count
    )
}

fn state(a: &Agent) -> &'static str {
    match a.spec.state {
        DesiredState::Running => "Running",
        DesiredState::Stopped => "Stopped",
    }
}

/// `hive describe`: the agent's identity, spec, status, conditions and recent events.
pub fn describe(a: &Agent, events: &[Event]) -> String {
    let m = &a.metadata;
    let st = &a.status;
    let or_dash = |v: Option<&str>| v.map_or_else(|| "-".to_string(), str::to_string);
    let labels = m
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = String::new();
    out += &format!("Name:         {}\n", m.name);
    out += &format!("Owner:        {}\n", or_dash(m.owner.as_deref()));
    out += &format!(
        "Labels:       {}\n",
        if labels.is_empty() { "-" } else { &labels }
    );
    out += &format!(
        "UID:          {}\n",
        m.uid.map_or_else(|| "-".to_string(), |u| u.to_string())
    );
    out += &format!(
        "Created:      {} ({} ago)\n",
        or_dash_time(m.creation_timestamp),
        age(m.creation_timestamp)
    );
    out += &format!(
        "Generation:   {} (observed {})\n",
        m.generation, st.observed_generation
    );
    out += "Spec:\n";
    for line in serde_yaml::to_string(&a.spec).unwrap_or_default().lines() {
        out += &format!("  {line}\n");
    }
    out += "Status:\n";
    out += &format!(
        "  Phase:      {} (since {})\n",
        st.phase,
        or_dash_time(st.last_transition_time)
    );
    out += &format!("  Message:    {}\n", or_dash(st.message.as_deref()));
    out += &format!(
        "  Container:  {}\n",
        st.container_id
            .as_deref()
            .map_or("-".into(), |c| c.chars().take(12).collect::<String>())
    );
    out += &format!("  Restarts:   {}\n", st.restart_count);
    if let Some(t) = &st.expires_at {
        out += &format!("  Expires:    {t}\n");
    }
    if let Some(t) = &st.stops_at {
        out += &format!("  Stops at:   {t} (idle)\n");
    }
    if let Some(t) = &st.idle_since {
        out += &format!("  Idle since: {t}\n");
    }
    for c in &st.conditions {
        out += &format!(
            "  {:<11} {} ({}{})\n",
            format!("{}:", c.kind),
            c.status,
            c.reason,
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    out += "Events:\n";
    if events.is_empty() {
        out += "  <none>\n";
    }
    for e in events.iter().rev().take(15).rev() {
        out += &format!(
            "  {:<8} {:<10} {:>5} ago  {}{}\n",
            e.kind,
            e.reason,
            age(Some(e.last_time)),
            e.message,
            if e.count > 1 {
                format!(" (x{})", e.count)
            } else {
                String::new()
            }
        );
    }
    out
}

/// A time as RFC 3339, or `-`.
fn or_dash_time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_string())
}

/// How long ago a time was, in the largest whole unit (`45s`, `3m`, `2h`, `4d`).
pub fn age(t: Option<Timestamp>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let secs = (Timestamp::now().get() - t.get()).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
