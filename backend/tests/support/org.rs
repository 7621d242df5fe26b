//! The department store's behaviour, one check run on both stores (the
//! embedded store in tests/embedded.rs, a real redis-server in
//! tests/redis_store.rs).

use tern_backend::store::{DeptMember, DeptRecord, OrgStore};

fn dept(id: &str, parent: &str) -> DeptRecord {
    DeptRecord {
        dept_id: id.into(),
        name: format!("{id} name"),
        parent: parent.into(),
        order: 0,
        admins: vec!["acme~boss".into()],
        group_id: String::new(),
        version: 0,
        created_ms: 1_000,
    }
}

fn member(user: &str, title: &str) -> DeptMember {
    DeptMember {
        user_id: user.into(),
        title: title.into(),
        order: 0,
    }
}

/// Proves: versions compare-and-set (create at 0, change at the stored
/// version, a stale version writes nothing); a tenant's departments list
/// in id order and apart from another tenant's; members page in user order
/// and index their user; a delete at the right version takes the members
/// and their index with it.
pub fn departments_compare_and_set_and_index_members(s: &dyn OrgStore) {
    assert_eq!(s.dept("acme", "acme~hq").unwrap(), None);
    assert!(s.put_dept("acme", &dept("acme~hq", ""), 0).unwrap());
    assert!(
        !s.put_dept("acme", &dept("acme~hq", ""), 0).unwrap(),
        "exists already"
    );
    assert!(s.put_dept("acme", &dept("acme~eng", "acme~hq"), 0).unwrap());
    assert!(s.put_dept("globex", &dept("globex~hq", ""), 0).unwrap());
    let hq = s.dept("acme", "acme~hq").unwrap().unwrap();
    assert_eq!(hq.version, 1);
    assert_eq!(hq.admins, ["acme~boss"]);
    let renamed = DeptRecord {
        name: "Head office".into(),
        ..hq.clone()
    };
    assert!(s.put_dept("acme", &renamed, 1).unwrap());
    assert!(!s.put_dept("acme", &renamed, 1).unwrap(), "a stale version");
    let hq = s.dept("acme", "acme~hq").unwrap().unwrap();
    assert_eq!((hq.name.as_str(), hq.version), ("Head office", 2));
    let ids: Vec<String> = s
        .depts("acme")
        .unwrap()
        .into_iter()
        .map(|d| d.dept_id)
        .collect();
    assert_eq!(ids, ["acme~eng", "acme~hq"]);
    assert_eq!(s.depts("acme").unwrap()[1].version, 2);
    assert_eq!(s.depts("globex").unwrap().len(), 1);
    assert!(s.depts("initech").unwrap().is_empty());

    for (u, t) in [
        ("acme~carol", "CTO"),
        ("acme~alice", "engineer"),
        ("acme~bob", "intern"),
    ] {
        s.put_dept_member("acme", "acme~eng", &member(u, t))
            .unwrap();
    }
    s.put_dept_member("acme", "acme~eng", &member("acme~bob", "engineer"))
        .unwrap();
    s.put_dept_member("acme", "acme~hq", &member("acme~alice", ""))
        .unwrap();
    let page = s.dept_members("acme", "acme~eng", "", 2).unwrap();
    assert_eq!(
        page,
        [
            member("acme~alice", "engineer"),
            member("acme~bob", "engineer")
        ]
    );
    let rest = s.dept_members("acme", "acme~eng", "acme~bob", 10).unwrap();
    assert_eq!(rest, [member("acme~carol", "CTO")]);
    assert_eq!(
        s.user_depts("acme", "acme~alice").unwrap(),
        ["acme~eng", "acme~hq"]
    );
    assert!(
        s.remove_dept_member("acme", "acme~eng", "acme~carol")
            .unwrap()
    );
    assert!(
        !s.remove_dept_member("acme", "acme~eng", "acme~carol")
            .unwrap()
    );
    assert!(s.user_depts("acme", "acme~carol").unwrap().is_empty());

    assert!(
        !s.delete_dept("acme", "acme~eng", 7).unwrap(),
        "a stale version"
    );
    assert!(s.delete_dept("acme", "acme~eng", 1).unwrap());
    assert_eq!(s.dept("acme", "acme~eng").unwrap(), None);
    assert!(
        s.dept_members("acme", "acme~eng", "", 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.user_depts("acme", "acme~alice").unwrap(), ["acme~hq"]);
    assert!(s.user_depts("acme", "acme~bob").unwrap().is_empty());
    assert!(
        !s.delete_dept("acme", "acme~eng", 1).unwrap(),
        "gone already"
    );
}

/// Proves tenant seats: a user takes one at most once, no more than `max`
/// are held, tenants count apart, and a freed seat can be taken again.
pub fn seats_are_taken_up_to_the_limit_and_freed<S: tern_backend::Store + OrgStore>(s: &S) {
    assert_eq!(s.seats("acme").unwrap(), 0);
    assert!(s.take_seat("acme", "acme~a", 2).unwrap());
    assert!(s.take_seat("acme", "acme~a", 2).unwrap(), "held already");
    assert!(s.take_seat("acme", "acme~b", 2).unwrap());
    assert!(!s.take_seat("acme", "acme~c", 2).unwrap(), "all taken");
    assert_eq!(s.seats("acme").unwrap(), 2);
    assert!(
        s.take_seat("globex", "globex~c", 1).unwrap(),
        "another tenant"
    );
    assert!(s.free_seat("acme", "acme~b").unwrap());
    assert!(!s.free_seat("acme", "acme~b").unwrap(), "freed already");
    assert_eq!(s.seats("acme").unwrap(), 1);
    assert!(s.take_seat("acme", "acme~c", 2).unwrap());
    assert!(!s.take_seat("acme", "acme~b", 2).unwrap());
    assert_eq!(s.seats("globex").unwrap(), 1);
}

/// Proves the media byte count of a tenant: a charge that would pass the
/// limit counts nothing, a refund gives bytes back (never below 0), and
/// tenants count apart.
pub fn storage_is_charged_up_to_the_limit<S: OrgStore>(s: &S) {
    assert_eq!(s.storage_used("acme").unwrap(), 0);
    assert!(s.charge_storage("acme", 60, 100).unwrap());
    assert!(
        s.charge_storage("acme", 40, 100).unwrap(),
        "exactly at the limit"
    );
    assert!(!s.charge_storage("acme", 1, 100).unwrap());
    assert_eq!(s.storage_used("acme").unwrap(), 100);
    assert!(s.charge_storage("globex", 100, 100).unwrap());
    s.refund_storage("acme", 60).unwrap();
    assert!(s.charge_storage("acme", 50, 100).unwrap());
    s.refund_storage("acme", 1_000).unwrap();
    assert_eq!(s.storage_used("acme").unwrap(), 0);
    assert_eq!(s.storage_used("globex").unwrap(), 100);
}
