//! PostgreSQL through the async wrapper: a bind of a custom type (an enum) needs its OID,
//! which the key cannot look up without a round trip; such a read bypasses the cache (and
//! never panics), while diesel-async itself runs it.
#![cfg(all(feature = "async", feature = "postgres"))]

use caching_diesel::async_prelude::*;
use caching_diesel::{AsyncCachedConnection, Cache, CacheSet, ReadOutcome};
use diesel::pg::Pg;
use diesel::serialize::{IsNull, Output, ToSql};
use diesel_async::AsyncPgConnection;

/// The database's `cm_mood` enum.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "cm_mood"))]
struct Mood;

/// The `happy` mood.
#[derive(Debug, diesel::expression::AsExpression)]
#[diesel(sql_type = Mood)]
struct Happy;

impl ToSql<Mood, Pg> for Happy {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        use std::io::Write;
        out.write_all(b"happy")?;
        Ok(IsNull::No)
    }
}

#[derive(QueryableByName, CachedRow, serde::Serialize, serde::Deserialize, Debug)]
struct V {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    v: i32,
}

#[test]
fn a_bind_of_a_custom_type_bypasses_the_cache() {
    let test = "a_bind_of_a_custom_type_bypasses_the_cache";
    let Some(url) = caching_tests::require_env("PG_DATABASE_URL", test) else {
        return;
    };
    caching_tests::async_db::runtime().block_on(async {
        let mut raw = AsyncPgConnection::establish(&url).await.unwrap();
        let schema = caching_tests::db::unique_name("async_pg_custom_type");
        raw.batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema}; \
             CREATE TYPE cm_mood AS ENUM ('happy', 'sad')"
        ))
        .await
        .unwrap();
        let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
        for _ in 0..2 {
            let (rows, outcome) = diesel::sql_query("SELECT 1 AS v WHERE $1 = 'happy'::cm_mood")
                .bind::<Mood, _>(Happy)
                .cached()
                .timeout(std::time::Duration::from_secs(60))
                .load_with_outcome::<V>(&mut conn)
                .await
                .unwrap();
            assert_eq!(rows.iter().map(|r| r.v).collect::<Vec<_>>(), [1]);
            assert_eq!(outcome, ReadOutcome::Bypassed("no cache key"));
        }
        assert_eq!(conn.cache().stats().hits, 0);
    });
}
