//! Doctor's `replication` check: whether a commit the function sees
//! acknowledged survives a failover (docs/semantics.md, "Assumptions").

use tokio_postgres::Client;

use super::{Finding, Report};

pub(super) async fn check(
    client: &Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("replication");
    // Physical standbys only (a logical walsender, a CDC tool, is connected
    // to a database; a standby is not). Their sync_state is readable by
    // superusers and pg_read_all_stats's members only; for others it is
    // NULL and the settings are judged alone.
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), count(r.pid), count(r.sync_state), \
                    count(*) FILTER (WHERE r.sync_state IN ('sync', 'quorum')), \
                    count(*) FILTER (WHERE r.sync_state = 'potential'), \
                    current_setting('synchronous_standby_names'), current_setting('synchronous_commit') \
             FROM (SELECT 1) AS one LEFT JOIN (pg_stat_replication r \
                  JOIN pg_stat_activity a ON a.pid = r.pid AND a.datid IS NULL) ON true",
            &[],
        )
        .await?;
    let (names, commit): (String, String) = (row.get(5), row.get(6));
    let state = Replication {
        standby: row.get(0),
        standbys: row.get(1),
        visible: row.get(2),
        synchronous: row.get(3),
        potential: row.get(4),
        names: &names,
        commit: &commit,
    };
    if let Some(f) = replication_finding(&state) {
        report.findings.push(f);
    }
    Ok(())
}

/// What a server says of its replication, for [`replication_finding`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Replication<'a> {
    /// The server is a standby itself.
    pub standby: bool,
    /// Standbys streaming from it.
    pub standbys: i64,
    /// Of those, the ones whose `sync_state` the role may read.
    pub visible: i64,
    /// Of those, the ones a commit waits for (`sync` or `quorum`).
    pub synchronous: i64,
    /// Of those, the ones named but not yet waited for (`potential`:
    /// catching up, or beyond the number asked for).
    pub potential: i64,
    /// `synchronous_standby_names`.
    pub names: &'a str,
    /// `synchronous_commit`.
    pub commit: &'a str,
}

/// Whether a commit acknowledged on the server `r` describes can be lost
/// on a failover (no standby a commit waits for), or the server is a
/// standby itself.
pub fn replication_finding(r: &Replication) -> Option<Finding> {
    let (problem, fix) = if r.standby {
        (
            "this server is a standby (read-only): the function cannot write here".to_owned(),
            "point the database secret's host at the primary (or the proxy in front of it)"
                .to_owned(),
        )
    } else {
        let none_waited_for = if r.visible == r.standbys {
            r.synchronous == 0
        } else {
            r.names.trim().is_empty()
        };
        // remote_write: the standby has the commit in memory, not on disk.
        if r.standbys == 0
            || !(none_waited_for || matches!(r.commit, "off" | "local" | "remote_write"))
        {
            return None;
        }
        let why = if r.visible != r.standbys || r.names.trim().is_empty() || r.synchronous > 0 {
            ""
        } else if r.potential > 0 {
            ", which names them but none is synchronous yet: catching up, or not yet connected"
        } else {
            ", which names none of them"
        };
        (
            format!(
                "{} standby(s) replicate asynchronously (synchronous_standby_names '{}', synchronous_commit {}{why}): a failover to one a moment behind loses commits the function was told of, and SQS has deleted their messages",
                r.standbys, r.names, r.commit
            ),
            "name the standbys a failover may promote in synchronous_standby_names with synchronous_commit on (or remote_apply), or use RDS Multi-AZ or Aurora (docs/semantics.md, \"Assumptions\")".to_owned(),
        )
    };
    Some(Finding {
        check: "replication",
        subject: "server".into(),
        problem,
        fix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asynchronous_standbys_and_standbys_themselves_are_findings() {
        let r = |standbys, visible, synchronous, names, commit| Replication {
            standby: false,
            standbys,
            visible,
            synchronous,
            potential: 0,
            names,
            commit,
        };
        assert_eq!(
            replication_finding(&r(0, 0, 0, "", "on")),
            None,
            "no standby: nothing to lose to"
        );
        // Judged by the settings where sync_state is hidden from the role.
        assert_eq!(
            replication_finding(&r(2, 0, 0, "ANY 1 (s1, s2)", "on")),
            None
        );
        assert_eq!(replication_finding(&r(1, 0, 0, "s1", "remote_apply")), None);
        assert!(replication_finding(&r(1, 0, 0, "", "on")).is_some());
        assert!(replication_finding(&r(1, 0, 0, "s1", "local")).is_some());
        assert!(replication_finding(&r(1, 0, 0, "s1", "off")).is_some());
        // By the standbys' states where the role sees them: names that
        // match none of them are asynchronous replication.
        assert_eq!(replication_finding(&r(2, 2, 1, "s1", "on")), None);
        let none = replication_finding(&r(1, 1, 0, "nobody", "on")).unwrap();
        assert!(
            none.problem.contains("names none of them"),
            "{}",
            none.problem
        );
        let catching_up = Replication {
            potential: 1,
            ..r(1, 1, 0, "s1", "on")
        };
        let found = replication_finding(&catching_up).unwrap();
        assert!(
            found.problem.contains("none is synchronous yet"),
            "{}",
            found.problem
        );
        // The standby has a remote_write commit in memory only.
        assert!(replication_finding(&r(1, 1, 1, "s1", "remote_write")).is_some());
        let standby = Replication {
            standby: true,
            ..Replication::default()
        };
        assert!(
            replication_finding(&standby)
                .unwrap()
                .problem
                .contains("standby")
        );
    }
}
