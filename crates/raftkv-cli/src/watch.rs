//! `raftkv cluster watch`: a live view of every node, and a timeline of what happened.
//!
//! Every `--interval` (250 ms) the client asks each node for its Status ([`Sample`]). A table
//! shows each node's role, term, leader, applied index, lag behind the leader, db size and the
//! client's view of it (latency, breaker); below it, the [`Timeline`] lists events: nodes going
//! down and coming back, the leader lost, a leader elected — with the leaderless window, measured
//! from the first sample without a reachable leader to the first with the new one (so its
//! resolution is the refresh interval). The view keeps running while nodes die and return.
//! `--once` prints one sample (`-o json` for scripts) and exits.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftkv_client::pb::Role;
use raftkv_client::{Client, NodeReport};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Row, Table};
use ratatui::Frame;
use serde_json::json;

use crate::output::{human_bytes, role_name};

/// One node as seen in one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    pub id: Option<u64>,
    pub addr: String,
    pub reachable: bool,
    pub role: String,
    pub term: u64,
    pub leader: u64,
    pub applied: u64,
    pub last_log: u64,
    pub db_size: u64,
    pub latency_ms: Option<f64>,
    pub breaker: String,
}

/// Every node at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub nodes: Vec<NodeSample>,
}

impl Sample {
    pub fn from_reports(at_ms: u64, reports: &[NodeReport]) -> Self {
        let nodes = reports
            .iter()
            .map(|r| match &r.status {
                Ok(s) => NodeSample {
                    id: Some(s.id),
                    addr: r.addr.clone(),
                    reachable: true,
                    role: role_name(s.role).to_string(),
                    term: s.term,
                    leader: s.leader_id,
                    applied: s.applied_index,
                    last_log: s.last_log_index,
                    db_size: s.db_size_bytes,
                    latency_ms: r.latency.map(|d| d.as_secs_f64() * 1000.0),
                    breaker: r.endpoint.as_ref().map_or("-", |e| e.breaker).to_string(),
                },
                Err(_) => NodeSample {
                    id: r.id,
                    addr: r.addr.clone(),
                    reachable: false,
                    role: "unreachable".into(),
                    term: 0,
                    leader: 0,
                    applied: 0,
                    last_log: 0,
                    db_size: 0,
                    latency_ms: None,
                    breaker: r.endpoint.as_ref().map_or("-", |e| e.breaker).to_string(),
                },
            })
            .collect();
        Self { at_ms, nodes }
    }

    /// The reachable node in the Leader role with the highest term: `(id, term)`.
    pub fn leader(&self) -> Option<(u64, u64)> {
        self.nodes
            .iter()
            .filter(|n| n.reachable && n.role == role_name(Role::Leader as i32))
            .max_by_key(|n| n.term)
            .and_then(|n| n.id.map(|id| (id, n.term)))
    }

    fn leader_applied(&self) -> Option<u64> {
        let (id, _) = self.leader()?;
        self.nodes.iter().find(|n| n.id == Some(id)).map(|n| n.applied)
    }

    pub fn json(&self) -> serde_json::Value {
        let leader = self.leader();
        json!({
            "at_ms": self.at_ms,
            "leader": leader.map(|(id, _)| id),
            "term": leader.map(|(_, t)| t),
            "nodes": self.nodes.iter().map(|n| json!({
                "id": n.id,
                "addr": n.addr,
                "role": n.role,
                "term": n.term,
                "leader": n.leader,
                "applied_index": n.applied,
                "lag": self.leader_applied().map(|l| l.saturating_sub(n.applied)).filter(|_| n.reachable),
                "db_size_bytes": n.db_size,
                "latency_ms": n.latency_ms,
                "breaker": n.breaker,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Something that happened, as the samples show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    NodeDown {
        id: u64,
    },
    NodeUp {
        id: u64,
    },
    LeaderLost {
        previous: u64,
    },
    /// A leader appeared; `leaderless_ms` is how long there was none (None for the first one
    /// seen, or a leader change with no sample in between).
    LeaderElected {
        id: u64,
        term: u64,
        leaderless_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: u64,
    pub kind: EventKind,
}

impl Event {
    pub fn describe(&self) -> String {
        let when = format_time(self.at_ms);
        match &self.kind {
            EventKind::NodeDown { id } => format!("{when}  node {id} down"),
            EventKind::NodeUp { id } => format!("{when}  node {id} up"),
            EventKind::LeaderLost { previous } => format!("{when}  leader lost (was node {previous})"),
            EventKind::LeaderElected {
                id,
                term,
                leaderless_ms: Some(ms),
            } => format!("{when}  node {id} elected leader, term {term}, after {ms} ms without a leader"),
            EventKind::LeaderElected { id, term, .. } => format!("{when}  node {id} is leader, term {term}"),
        }
    }
}

fn format_time(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        at_ms % 1000
    )
}

/// Turns successive samples into events.
#[derive(Debug, Default)]
pub struct Timeline {
    reachable: BTreeMap<u64, bool>,
    leader: Option<u64>,
    leaderless_since: Option<u64>,
    seen_any: bool,
    pub events: Vec<Event>,
}

impl Timeline {
    /// Feeds one sample; returns the events it produced (also kept in `events`).
    pub fn observe(&mut self, sample: &Sample) -> Vec<Event> {
        let mut new = Vec::new();
        let at_ms = sample.at_ms;
        for n in &sample.nodes {
            let Some(id) = n.id else { continue };
            let was = self.reachable.insert(id, n.reachable);
            match (was, n.reachable) {
                (Some(true), false) => new.push(EventKind::NodeDown { id }),
                (Some(false), true) => new.push(EventKind::NodeUp { id }),
                (None, false) if self.seen_any => new.push(EventKind::NodeDown { id }),
                _ => {}
            }
        }
        let now = sample.leader();
        match (self.leader, now) {
            (Some(previous), None) => {
                new.push(EventKind::LeaderLost { previous });
                self.leaderless_since = Some(at_ms);
            }
            (None, None) if !self.seen_any => self.leaderless_since = Some(at_ms),
            (prev, Some((id, term))) if prev != Some(id) => {
                let leaderless_ms = match (prev, self.leaderless_since) {
                    (None, Some(since)) if self.seen_any => Some(at_ms.saturating_sub(since)),
                    _ => None,
                };
                new.push(EventKind::LeaderElected {
                    id,
                    term,
                    leaderless_ms,
                });
                self.leaderless_since = None;
            }
            _ => {}
        }
        self.leader = now.map(|(id, _)| id);
        self.seen_any = true;
        let events: Vec<Event> = new.into_iter().map(|kind| Event { at_ms, kind }).collect();
        self.events.extend(events.iter().cloned());
        events
    }
}

/// Draws the node table and the event timeline.
pub fn draw(frame: &mut Frame, sample: &Sample, timeline: &Timeline, endpoints: &str) {
    let areas = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Length(sample.nodes.len() as u16 + 3),
            Constraint::Min(3),
        ])
        .split(frame.area());
    let title = match sample.leader() {
        Some((id, term)) => format!("raftkv cluster watch — leader: node {id} (term {term}) — {endpoints} — q quits"),
        None => format!("raftkv cluster watch — NO LEADER — {endpoints} — q quits"),
    };
    frame.render_widget(Paragraph::new(Line::from(title)), areas[0]);

    let leader_applied = sample.leader_applied();
    let header = Row::new([
        "NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "APPLIED", "LAG", "DB SIZE", "LATENCY", "BREAKER",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = sample.nodes.iter().map(|n| {
        let dash = || "-".to_string();
        let cells = if n.reachable {
            vec![
                n.id.map_or_else(dash, |i| i.to_string()),
                n.addr.clone(),
                n.role.clone(),
                n.term.to_string(),
                if n.leader == 0 { dash() } else { n.leader.to_string() },
                n.applied.to_string(),
                leader_applied.map_or_else(dash, |l| l.saturating_sub(n.applied).to_string()),
                human_bytes(n.db_size),
                n.latency_ms.map_or_else(dash, |l| format!("{l:.1}ms")),
                n.breaker.clone(),
            ]
        } else {
            let mut c = vec![
                n.id.map_or_else(dash, |i| i.to_string()),
                n.addr.clone(),
                "UNREACHABLE".into(),
            ];
            c.extend(std::iter::repeat_n(dash(), 6));
            c.push(n.breaker.clone());
            c
        };
        let style = if n.role == "leader" {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        Row::new(cells).style(style)
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(21),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title("nodes"));
    frame.render_widget(table, areas[1]);

    let height = areas[2].height.saturating_sub(2) as usize;
    let items: Vec<ListItem> = timeline
        .events
        .iter()
        .rev()
        .take(height.max(1))
        .map(|e| ListItem::new(e.describe()))
        .collect();
    let list = List::new(items).block(Block::default().borders(Borders::ALL).title("events (newest first)"));
    frame.render_widget(list, areas[2]);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes one sample of the cluster.
pub async fn sample(client: &Client) -> Sample {
    let reports = client.cluster_status().await;
    Sample::from_reports(now_ms(), &reports)
}

/// Runs the live view until `q`, Esc or Ctrl-C.
pub async fn run_live(client: &Client, endpoints: &str, interval: Duration) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyModifiers};
    let mut terminal = ratatui::try_init()?;
    let mut timeline = Timeline::default();
    let result = loop {
        let s = sample(client).await;
        timeline.observe(&s);
        if let Err(e) = terminal.draw(|f| draw(f, &s, &timeline, endpoints)) {
            break Err(e);
        }
        match event::poll(interval) {
            Ok(true) => match event::read() {
                Ok(TermEvent::Key(k))
                    if k.code == KeyCode::Char('q')
                        || k.code == KeyCode::Esc
                        || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)) =>
                {
                    break Ok(())
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            },
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    ratatui::restore();
    // Leave the timeline on the normal screen, for the record.
    let mut out = std::io::stdout().lock();
    for e in &timeline.events {
        let _ = writeln!(out, "{}", e.describe());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn node(id: u64, role: &str, term: u64, leader: u64, applied: u64) -> NodeSample {
        NodeSample {
            id: Some(id),
            addr: format!("127.0.0.1:700{id}"),
            reachable: role != "unreachable",
            role: role.into(),
            term,
            leader,
            applied,
            last_log: applied,
            db_size: 4096,
            latency_ms: Some(1.0),
            breaker: "closed".into(),
        }
    }

    fn sample(at_ms: u64, nodes: Vec<NodeSample>) -> Sample {
        Sample { at_ms, nodes }
    }

    /// A recorded failover: node 1 leads, dies, nobody leads for two samples, node 3 wins,
    /// node 1 comes back as a follower.
    fn failover() -> Vec<Sample> {
        vec![
            sample(
                1_000,
                vec![
                    node(1, "leader", 2, 1, 10),
                    node(2, "follower", 2, 1, 10),
                    node(3, "follower", 2, 1, 10),
                ],
            ),
            sample(
                1_250,
                vec![
                    node(1, "unreachable", 0, 0, 0),
                    node(2, "follower", 2, 1, 10),
                    node(3, "follower", 2, 1, 10),
                ],
            ),
            sample(
                1_500,
                vec![
                    node(1, "unreachable", 0, 0, 0),
                    node(2, "candidate", 3, 0, 10),
                    node(3, "follower", 3, 0, 10),
                ],
            ),
            sample(
                1_750,
                vec![
                    node(1, "unreachable", 0, 0, 0),
                    node(2, "follower", 3, 3, 11),
                    node(3, "leader", 3, 3, 11),
                ],
            ),
            sample(
                2_000,
                vec![
                    node(1, "follower", 3, 3, 11),
                    node(2, "follower", 3, 3, 11),
                    node(3, "leader", 3, 3, 11),
                ],
            ),
        ]
    }

    #[test]
    fn a_leader_change_yields_one_event_with_its_window() {
        let mut t = Timeline::default();
        let mut all = Vec::new();
        for s in failover() {
            all.extend(t.observe(&s).into_iter().map(|e| e.kind));
        }
        assert_eq!(
            all,
            vec![
                EventKind::LeaderElected {
                    id: 1,
                    term: 2,
                    leaderless_ms: None
                },
                EventKind::NodeDown { id: 1 },
                EventKind::LeaderLost { previous: 1 },
                EventKind::LeaderElected {
                    id: 3,
                    term: 3,
                    leaderless_ms: Some(500)
                },
                EventKind::NodeUp { id: 1 },
            ]
        );
        assert!(t.events[3]
            .describe()
            .contains("node 3 elected leader, term 3, after 500 ms without a leader"));
    }

    #[test]
    fn a_steady_cluster_yields_no_events_after_the_first() {
        let mut t = Timeline::default();
        let steady = failover()[0].clone();
        assert_eq!(t.observe(&steady).len(), 1);
        for i in 1..10 {
            let mut s = steady.clone();
            s.at_ms += i * 250;
            assert!(t.observe(&s).is_empty());
        }
    }

    #[test]
    fn the_view_shows_the_leader_and_the_events() {
        let mut t = Timeline::default();
        let samples = failover();
        for s in &samples {
            t.observe(s);
        }
        let mut terminal = Terminal::new(TestBackend::new(120, 20)).unwrap();
        terminal
            .draw(|f| draw(f, &samples[4], &t, "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"))
            .unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect::<Vec<_>>()
            .chunks(120)
            .map(|line| line.concat())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(screen.contains("leader: node 3 (term 3)"), "{screen}");
        assert!(
            screen.contains("node 3 elected leader, term 3, after 500 ms without a leader"),
            "{screen}"
        );
        assert!(
            screen.contains("UNREACHABLE") || screen.contains("follower"),
            "{screen}"
        );
    }

    #[test]
    fn json_sample_has_lag_and_leader() {
        let s = &failover()[3];
        let v = s.json();
        assert_eq!(v["leader"], 3);
        assert_eq!(v["nodes"][1]["lag"], 0);
        assert_eq!(v["nodes"][0]["role"], "unreachable");
        assert!(v["nodes"][0]["lag"].is_null());
    }
}
