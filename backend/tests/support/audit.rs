//! The audit log's behaviour, one check run on both stores (the embedded
//! store in tests/embedded.rs, a real redis-server in tests/redis_store.rs).

use tern_backend::store::{AuditLog, AuditRecord};

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time_ms: 1_000 + n,
        actor: "key:crm".into(),
        level: "tenant".into(),
        action: "DELETE /api/v1/groups/{group_id}".into(),
        target: format!("/api/v1/groups/acme~g{n}"),
        status: 200,
    }
}

/// Proves: seqs count from 1 per tenant, tenants' logs are apart, a page
/// is newest first from `before_seq`, and only the newest `keep` stay.
pub fn audit_log_is_per_tenant_bounded_and_paged(log: &dyn AuditLog) {
    assert!(log.audit_page("acme", 0, 10).unwrap().is_empty());
    for n in 1..=7 {
        assert_eq!(log.audit_append("acme", &record(n), 5).unwrap(), n);
    }
    assert_eq!(log.audit_append("", &record(100), 5).unwrap(), 1);
    assert_eq!(log.audit_append("globex", &record(200), 5).unwrap(), 1);

    let page = log.audit_page("acme", 0, 3).unwrap();
    let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [7, 6, 5]);
    assert_eq!(
        page[0],
        AuditRecord {
            seq: 7,
            ..record(7)
        }
    );
    let seqs: Vec<u64> = log
        .audit_page("acme", 5, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [4, 3], "only the newest 5 are kept");
    let all: Vec<u64> = log
        .audit_page("acme", 0, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(all, [7, 6, 5, 4, 3]);

    let system = log.audit_page("", 0, 10).unwrap();
    assert_eq!(system.len(), 1);
    assert_eq!(system[0].target, "/api/v1/groups/acme~g100");
    assert_eq!(log.audit_page("globex", 0, 10).unwrap().len(), 1);
    assert!(log.audit_page("initech", 0, 10).unwrap().is_empty());
}
