//! Basic authentication against the bcrypt hashes of `basic_auth_users`, as the
//! exporter-toolkit does it, without letting a hostile client starve the daemon:
//! - bcrypt, tens of milliseconds at the usual cost, runs on a blocking thread, never on the
//!   thread that serves, and one check at a time (`CHECKS`), so wrong passwords cost at most
//!   one core however many arrive;
//! - a (user, password) pair that passed is remembered, so that Prometheus's scrapes pay bcrypt
//!   once, not at every scrape (the toolkit caches too). What is kept is an HMAC of the pair
//!   under a key made at start, never the password, and a request's HMAC is compared with every
//!   one kept, in constant time;
//! - an unknown user is checked against a known user's hash all the same, so that how long
//!   the answer takes does not tell which users exist.
use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use headers::{Authorization, HeaderMapExt as _, authorization::Basic};
use hyper::HeaderMap;
use ring::{hmac, rand::SystemRandom};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

/// bcrypt checks that may run at once.
const CHECKS: usize = 1;
/// (user, password) pairs remembered: a few users, each with its password, and room for a
/// password being changed.
const REMEMBERED: usize = 32;

pub struct BasicAuth {
    /// User name -> bcrypt hash; never empty.
    users: BTreeMap<String, String>,
    key: hmac::Key,
    passed: Mutex<VecDeque<hmac::Tag>>,
    checks: Arc<Semaphore>,
    counts: Arc<Counts>,
}

/// bcrypt checks made, and the most that ran at once.
#[derive(Default)]
struct Counts {
    made: AtomicU64,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl fmt::Debug for BasicAuth {
    // The hashes stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// For these users (name -> bcrypt hash, checked by `web_config`); None when there are
    /// none: the endpoint is open, as the toolkit has it.
    pub fn new(
        users: BTreeMap<String, String>,
    ) -> Result<Option<BasicAuth>, ring::error::Unspecified> {
        if users.is_empty() {
            return Ok(None);
        }
        Ok(Some(BasicAuth {
            users,
            key: hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())?,
            passed: Mutex::new(VecDeque::new()),
            checks: Arc::new(Semaphore::new(CHECKS)),
            counts: Arc::default(),
        }))
    }

    /// Whether the request's `Authorization: Basic` names a user with the right password.
    /// `checking` is called when a bcrypt check starts for it (after waiting its turn).
    pub async fn allows(&self, headers: &HeaderMap, checking: impl FnOnce()) -> bool {
        let Some(Authorization(basic)) = headers.typed_get::<Authorization<Basic>>() else {
            return false;
        };
        let (user, password) = (basic.username(), basic.password());
        let tag = self.tag(user, password);
        if self.remembered(&tag) {
            return true;
        }
        let (hash, known) = match self.users.get(user) {
            Some(hash) => (hash.clone(), true),
            None => (self.users.values().next().expect("users").clone(), false),
        };
        let Ok(permit) = self.checks.clone().acquire_owned().await else {
            return false;
        };
        checking();
        let password = password.as_bytes().to_vec();
        let counts = self.counts.clone();
        let matched = tokio::task::spawn_blocking(move || {
            // Held until bcrypt is done, even if the connection that asked is gone.
            let _permit = permit;
            counts.made.fetch_add(1, Ordering::Relaxed);
            let now = counts.running.fetch_add(1, Ordering::Relaxed) + 1;
            counts.most_at_once.fetch_max(now, Ordering::Relaxed);
            let matched = bcrypt::verify(&password, &hash).unwrap_or(false);
            counts.running.fetch_sub(1, Ordering::Relaxed);
            matched
        })
        .await
        .unwrap_or(false);
        if matched && known {
            self.remember(tag);
        }
        matched && known
    }

    fn tag(&self, user: &str, password: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        // The name's length first: ("a", "b:c") and ("a:b", "c") are different pairs.
        ctx.update(&(user.len() as u64).to_le_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        ctx.sign()
    }

    /// Whether `tag` is one of those kept, compared with each of them in constant time.
    fn remembered(&self, tag: &hmac::Tag) -> bool {
        let passed = self.passed.lock().expect("basic auth lock");
        let found = passed.iter().fold(subtle::Choice::from(0), |found, kept| {
            found | kept.as_ref().ct_eq(tag.as_ref())
        });
        found.into()
    }

    fn remember(&self, tag: hmac::Tag) {
        let mut passed = self.passed.lock().expect("basic auth lock");
        if passed.len() == REMEMBERED {
            passed.pop_front();
        }
        passed.push_back(tag);
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::{AUTHORIZATION, HeaderValue};

    use super::*;

    /// The lowest cost bcrypt takes: the tests check what is checked, not how long it takes.
    const COST: u32 = 4;

    fn auth(users: &[(&str, &str)]) -> BasicAuth {
        let users = users
            .iter()
            .map(|(u, p)| (u.to_string(), bcrypt::hash(p, COST).unwrap()))
            .collect();
        BasicAuth::new(users).unwrap().unwrap()
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.typed_insert(Authorization::basic(user, password));
        h
    }

    impl BasicAuth {
        async fn check(&self, headers: &HeaderMap) -> bool {
            self.allows(headers, || ()).await
        }
    }

    fn made(a: &BasicAuth) -> u64 {
        a.counts.made.load(Ordering::Relaxed)
    }

    #[test]
    fn no_users_no_authentication() {
        assert!(BasicAuth::new(BTreeMap::new()).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_right_password_passes_and_is_remembered() {
        let a = auth(&[("prometheus", "s3cret"), ("other", "pass")]);
        assert!(a.check(&basic("prometheus", "s3cret")).await);
        assert_eq!(made(&a), 1);
        // Remembered: no second bcrypt.
        assert!(a.check(&basic("prometheus", "s3cret")).await);
        assert_eq!(made(&a), 1);
        assert!(a.check(&basic("other", "pass")).await);
        assert_eq!(made(&a), 2);
        // Another user's password is not this one's.
        assert!(!a.check(&basic("other", "s3cret")).await);
    }

    #[tokio::test]
    async fn wrong_missing_or_malformed_credentials_fail() {
        let a = auth(&[("prometheus", "s3cret")]);
        assert!(!a.check(&basic("prometheus", "wrong")).await);
        assert!(!a.check(&basic("prometheus", "")).await);
        assert!(!a.check(&HeaderMap::new()).await);
        for raw in [
            "Bearer abc",
            "Basic !!!not-base64",
            // "prometheus" without a colon.
            "Basic cHJvbWV0aGV1cw==",
            "Basic ",
        ] {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(raw));
            assert!(!a.check(&h).await, "{raw}");
        }
        // A wrong password is not remembered: it costs a check every time.
        let before = made(&a);
        assert!(!a.check(&basic("prometheus", "wrong")).await);
        assert_eq!(made(&a), before + 1);
    }

    #[tokio::test]
    async fn an_unknown_user_costs_a_check_like_a_known_one() {
        let a = auth(&[("prometheus", "s3cret")]);
        // Even with the known user's password.
        assert!(!a.check(&basic("nobody", "s3cret")).await);
        assert_eq!(made(&a), 1, "checked against a hash all the same");
        assert!(!a.check(&basic("nobody", "s3cret")).await, "not remembered");
    }

    #[tokio::test]
    async fn the_pair_is_told_from_its_shifted_spelling() {
        // User "a" with password "b:c" and user "a:b"... cannot exist (web_config refuses
        // ':' in names), but the remembered tags must keep pairs apart all the same.
        let a = auth(&[("a", "b:c")]);
        assert!(a.check(&basic("a", "b:c")).await);
        assert_ne!(a.tag("a", "b:c").as_ref(), a.tag("a:b", "c").as_ref());
    }

    #[tokio::test]
    async fn checks_run_one_at_a_time_however_many_arrive() {
        let a = Arc::new(auth(&[("prometheus", "s3cret")]));
        let tries: Vec<_> = (0..16)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move { a.check(&basic("prometheus", &format!("x{i}"))).await })
            })
            .collect();
        for t in tries {
            assert!(!t.await.unwrap());
        }
        assert_eq!(made(&a), 16);
        assert_eq!(a.counts.most_at_once.load(Ordering::Relaxed), CHECKS);
    }

    #[tokio::test]
    async fn at_most_so_many_pairs_are_remembered() {
        let a = auth(&[("u", "p")]);
        for i in 0..REMEMBERED + 5 {
            a.remember(a.tag("u", &format!("p{i}")));
        }
        assert_eq!(a.passed.lock().unwrap().len(), REMEMBERED);
        assert!(!a.remembered(&a.tag("u", "p0")), "the oldest went first");
        assert!(a.remembered(&a.tag("u", &format!("p{}", REMEMBERED + 4))));
    }
}
