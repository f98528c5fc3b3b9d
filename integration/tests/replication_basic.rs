//! Record store and replay across three regions behind an emulated WAN (30 ms ± 5 ms one way):
//! what a user of the region API relies on — writes at home reach every region with the same
//! version, conditional writes, deletes as tombstones, redirects home, idempotent retries.

mod regions_common;

use anyhow::{Result, ensure};
use homeport_integration::wan::LinkConditions;
use hyper::StatusCode;
use regions_common::{Api, HOME_HEADER, REGIONS, Want, fast_setup, region_logs, spec, start};

/// One-way delay and jitter between every pair of regions.
const WAN_DELAY_MS: u64 = 30;
const WAN_JITTER_MS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_at_home_replicate_with_versions_tombstones_redirects_and_idempotency() -> Result<()>
{
    let wan = regions_common::uniform_wan(
        0xba51c,
        LinkConditions {
            delay_ms: WAN_DELAY_MS,
            jitter_ms: WAN_JITTER_MS,
            ..LinkConditions::default()
        },
    );
    let cluster = start(&spec(1), &fast_setup(), Some(&wan)).await?;
    let api = Api::new(&cluster)?;
    let logs = || region_logs(&cluster);

    // A write at home is readable everywhere, with the same value and ETag.
    let r = api.put("sh", "sh-1001", "profile", "hello", &[]).await?;
    ensure!(
        r.status == StatusCode::CREATED,
        "first PUT: {r:?}{}",
        logs()
    );
    ensure!(r.etag() == Some(1), "first PUT must be version 1: {r:?}");
    ensure!(
        r.json()?["shipped"] == true,
        "a 201 means on the queue: {r:?}"
    );
    for region in REGIONS {
        api.wait_record(
            &cluster,
            region,
            "sh-1001",
            "profile",
            Want::Value(1, "hello"),
        )
        .await?;
    }
    let home = api.get("ca", "sh-1001", "profile").await?;
    ensure!(
        home.header(HOME_HEADER) == Some("sh"),
        "a replica names the user's home: {home:?}"
    );

    // Conditional writes: the right If-Match wins, a stale one is refused with the current ETag.
    let r = api
        .put(
            "sh",
            "sh-1001",
            "profile",
            "second",
            &[("if-match", "\"1\"")],
        )
        .await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(2),
        "If-Match 1: {r:?}"
    );
    let r = api
        .put(
            "sh",
            "sh-1001",
            "profile",
            "stale",
            &[("if-match", "\"1\"")],
        )
        .await?;
    ensure!(
        r.status == StatusCode::PRECONDITION_FAILED && r.etag() == Some(2),
        "a stale If-Match must get 412 with the current ETag: {r:?}"
    );
    let r = api
        .put(
            "sh",
            "sh-1001",
            "profile",
            "third",
            &[("if-match", "\"2\"")],
        )
        .await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(3),
        "If-Match 2: {r:?}"
    );
    // "0" means "must not exist": refused for an existing record, accepted for a new one.
    let r = api
        .put(
            "sh",
            "sh-1001",
            "profile",
            "clobber",
            &[("if-match", "\"0\"")],
        )
        .await?;
    ensure!(
        r.status == StatusCode::PRECONDITION_FAILED && r.etag() == Some(3),
        "If-Match 0 on an existing record: {r:?}"
    );
    let r = api
        .put("sh", "sh-1001", "fresh", "new", &[("if-match", "\"0\"")])
        .await?;
    ensure!(
        r.status == StatusCode::CREATED && r.etag() == Some(1),
        "If-Match 0 on a new record: {r:?}"
    );
    for region in REGIONS {
        api.wait_record(
            &cluster,
            region,
            "sh-1001",
            "profile",
            Want::Value(3, "third"),
        )
        .await?;
        api.wait_record(&cluster, region, "sh-1001", "fresh", Want::Value(1, "new"))
            .await?;
    }

    // Deletes replicate as tombstones: 404 carrying the tombstone's version everywhere. The
    // record is seen everywhere first, so the 404 cannot be "not arrived yet".
    let r = api.put("sh", "sh-1001", "doomed", "bye", &[]).await?;
    ensure!(r.status == StatusCode::CREATED, "PUT doomed: {r:?}");
    for region in REGIONS {
        api.wait_record(&cluster, region, "sh-1001", "doomed", Want::Value(1, "bye"))
            .await?;
    }
    let r = api.delete("sh", "sh-1001", "doomed", &[]).await?;
    ensure!(
        r.status == StatusCode::OK && r.etag() == Some(2),
        "DELETE: {r:?}"
    );
    for region in REGIONS {
        api.wait_record(&cluster, region, "sh-1001", "doomed", Want::Deleted(2))
            .await?;
    }
    // A stale conditional delete is refused like a stale PUT.
    let r = api
        .delete("sh", "sh-1001", "profile", &[("if-match", "\"2\"")])
        .await?;
    ensure!(
        r.status == StatusCode::PRECONDITION_FAILED && r.etag() == Some(3),
        "a stale conditional DELETE: {r:?}"
    );

    // A write sent to the wrong region is redirected home (307 keeps method and body); following
    // the redirect writes it, and the wrong region wrote nothing of its own.
    let r = api
        .put("hk", "sh-1001", "redirected", "via-hk", &[])
        .await?;
    ensure!(
        r.status == StatusCode::TEMPORARY_REDIRECT,
        "PUT at hk for an sh user: {r:?}"
    );
    ensure!(
        r.header(HOME_HEADER) == Some("sh"),
        "307 names the home: {r:?}"
    );
    let location = r.header("location").unwrap_or_default().to_owned();
    let expected = format!("{}/v1/users/sh-1001/records/redirected", api.url("sh"));
    ensure!(
        location == expected,
        "Location {location:?}, expected {expected:?}"
    );
    let r = api.delete("ca", "sh-1001", "profile", &[]).await?;
    ensure!(
        r.status == StatusCode::TEMPORARY_REDIRECT,
        "DELETE at ca for an sh user: {r:?}"
    );
    let followed = regions_common::http(
        hyper::Method::PUT,
        &location,
        &[],
        bytes::Bytes::from_static(b"via-hk"),
    )
    .await?;
    ensure!(
        followed.status == StatusCode::CREATED && followed.etag() == Some(1),
        "following the redirect: {followed:?}"
    );
    for region in REGIONS {
        api.wait_record(
            &cluster,
            region,
            "sh-1001",
            "redirected",
            Want::Value(1, "via-hk"),
        )
        .await?;
        // The redirected DELETE did nothing anywhere.
        api.wait_record(
            &cluster,
            region,
            "sh-1001",
            "profile",
            Want::Value(3, "third"),
        )
        .await?;
    }

    // Idempotency-Key: a retry answers the first attempt's version and writes nothing more.
    let key = [("idempotency-key", "retry-7f3a")];
    let first = api.put("hk", "hk-2002", "cart", "one-item", &key).await?;
    ensure!(
        first.status == StatusCode::CREATED && first.etag() == Some(1),
        "first attempt: {first:?}"
    );
    // A retry may meet the first attempt's outbox slot before its (asynchronous) removal and
    // hear 503 "durable, not yet shipped"; a client retries that too. Every answer must carry
    // the first attempt's version, and one must finally be a success.
    let retried = regions_common::eventually(
        "a retry with the same Idempotency-Key to succeed",
        regions_common::WAIT_MS,
        || async {
            let r = api
                .put("hk", "hk-2002", "cart", "one-item", &key)
                .await
                .map_err(|e| format!("{e:#}"))?;
            match (r.status, r.etag()) {
                (s, Some(1)) if s.is_success() => Ok(Ok(())),
                (StatusCode::SERVICE_UNAVAILABLE, Some(1)) => Err(format!("{r:?}")),
                _ => Ok(Err(format!("{r:?}"))),
            }
        },
    )
    .await?;
    if let Err(r) = retried {
        anyhow::bail!("a retry with the same Idempotency-Key must answer the first version: {r}");
    }
    let now = api.get("hk", "hk-2002", "cart").await?;
    ensure!(
        now.etag() == Some(1),
        "the retry must not write again: {now:?}"
    );
    // The next write without a key is version 2: exactly one write happened before it.
    let next = api.put("hk", "hk-2002", "cart", "two-items", &[]).await?;
    ensure!(
        next.status == StatusCode::OK && next.etag() == Some(2),
        "next write: {next:?}"
    );
    for region in REGIONS {
        api.wait_record(
            &cluster,
            region,
            "hk-2002",
            "cart",
            Want::Value(2, "two-items"),
        )
        .await?;
    }

    // Everything above converges to one state in all regions.
    let digest = api
        .wait_converged(&cluster, regions_common::WAIT_MS)
        .await?;
    ensure!(
        digest["records"] == 5,
        "expected 5 rows (4 records of sh-1001 with one tombstone, 1 of hk-2002): {digest}"
    );
    // The regions really talked through the emulated WAN, in every direction.
    for a in REGIONS {
        for b in REGIONS.iter().filter(|b| **b != a) {
            let stats = wan.stats(a, b);
            ensure!(
                stats.datagrams_forwarded > 0,
                "no datagram went {a} -> {b} through the WAN: {stats:?}"
            );
        }
    }
    Ok(())
}
