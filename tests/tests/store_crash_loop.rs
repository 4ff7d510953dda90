//! The storage crash loop: a child process appends log entries to the sled store and reports
//! each one once it is durable; it is SIGKILLed at random moments, many times. After every
//! crash the store must open, hold every acknowledged entry (contiguously, no holes) and the
//! vote, and its state machine must be consistent with its own `last_applied`. Garbage after
//! the end of the database file (a torn write) must not stop it from opening.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::RaftLogReader;
use raftkv_store::StoreConfig;
use rand::Rng;

const ROUNDS: usize = 30;

#[test]
fn acknowledged_entries_survive_random_kills() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = rand::rng();
    let mut highest_acked = 0u64;
    let mut highest_vote = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftkv-store-crash-child"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        // Read acknowledgements on a thread, so the kill can land at any moment.
        let reader = std::thread::spawn(move || {
            let mut acked = 0u64;
            let mut vote = 0u64;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("acked ") {
                    acked = n.parse().expect("number");
                } else if let Some(t) = line.strip_prefix("vote ") {
                    vote = t.parse().expect("term");
                }
            }
            (acked, vote)
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(30..250)));
        child.kill().expect("kill");
        child.wait().expect("wait");
        let (acked, vote) = reader.join().expect("reader");
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert!(
            stderr.is_empty(),
            "round {round}: the child failed on its own: {stderr}"
        );
        highest_acked = highest_acked.max(acked);
        highest_vote = highest_vote.max(vote);

        if round % 5 == 4 {
            // A torn write: garbage after the end of the database file.
            let db = dir.path().join("db").join("db");
            let mut f = std::fs::OpenOptions::new().append(true).open(&db).expect("db file");
            use std::io::Write;
            f.write_all(&[0xA5; 777]).expect("append garbage");
        }

        let started = Instant::now();
        runtime.block_on(async {
            let mut store = raftkv_store::open(dir.path(), &StoreConfig::default())
                .unwrap_or_else(|e| panic!("round {round}: the store does not open after a crash: {e}"));
            let state = store.log_store.get_log_state().await.expect("log state");
            let last = state.last_log_id.map_or(0, |l| l.index);
            assert!(
                last >= highest_acked,
                "round {round}: acknowledged {highest_acked}, log ends at {last}"
            );
            let entries = store.log_store.try_get_log_entries(1..=last).await.expect("entries");
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(
                indexes,
                (1..=last).collect::<Vec<_>>(),
                "round {round}: a hole in the log"
            );
            // (A child killed while starting may not have saved a vote yet.)
            let saved_term = store
                .log_store
                .read_vote()
                .await
                .expect("vote")
                .map_or(0, |v| v.leader_id().term);
            assert!(
                saved_term >= highest_vote,
                "round {round}: the vote went back to {saved_term}"
            );

            let (applied, _) = store.state_machine.applied_state().await.expect("applied");
            let applied = applied.map_or(0, |l| l.index);
            assert!(
                applied <= last,
                "round {round}: applied {applied} beyond the log {last}"
            );
            let kv = store.handle.reader().get(b"k").expect("read");
            match kv {
                None => assert_eq!(applied, 0),
                Some(kv) => {
                    // One atomic batch per apply: data, last_applied and the store revision
                    // agree (every entry but the first membership one is a put of "k").
                    assert_eq!(
                        kv.value,
                        applied.to_string().into_bytes(),
                        "round {round}: data and last_applied disagree"
                    );
                    assert_eq!(
                        kv.mod_revision,
                        store.handle.reader().revision(),
                        "round {round}: data and the store revision disagree"
                    );
                }
            }
        });
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "recovery took {:?}",
            started.elapsed()
        );
    }
    assert!(highest_acked > 0, "the child never acknowledged anything");
}
