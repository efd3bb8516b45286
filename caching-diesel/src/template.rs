//! Template fragment caching with [minijinja](https://docs.rs/minijinja): the heir of
//! django-cache-machine's `{% cache objects %}` Jinja2 extension (feature `minijinja`).
//!
//! A fragment is a block of a template whose output is cached and tied to the rows it shows:
//!
//! ```jinja
//! {% call cache(posts, "post-list", timeout=600, extra=[user.id]) %}
//!   {% for post in posts %}<li>{{ post.title }}</li>{% endfor %}
//! {% endcall %}
//! ```
//!
//! The block is rendered only on a miss. A save of any of the rows deletes the fragment, as it
//! deletes the cached queries holding the rows, and so does a write that reaches a row through
//! its foreign keys (a comment saved under a post).
//!
//! ```
//! use caching_diesel::prelude::*;
//! use caching_diesel::template::{self, minijinja};
//! use caching_diesel::{Cache, CacheSet, CachedConnection};
//!
//! diesel::table! { posts (id) { id -> Integer, title -> Text } }
//!
//! #[derive(Queryable, Selectable, Identifiable, AsChangeset, Cached, serde::Serialize, serde::Deserialize)]
//! #[diesel(table_name = posts)]
//! struct Post { id: i32, title: String }
//!
//! # let raw = SqliteConnection::establish(":memory:").unwrap();
//! let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
//! # diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL)").execute(&mut *conn).unwrap();
//! # diesel::sql_query("INSERT INTO posts VALUES (1, 'Hello'), (2, 'World')").execute(&mut *conn).unwrap();
//! let mut env = minijinja::Environment::new();
//! template::register(&mut env, conn.cache().clone());
//! env.add_template(
//!     "list.html",
//!     r#"{% call cache(posts, "list") %}{% for p in posts %}<li>{{ p.title }}</li>{% endfor %}{% endcall %}"#,
//! ).unwrap();
//!
//! let load = |conn: &mut CachedConnection<SqliteConnection>| -> Vec<Post> {
//!     posts::table.order(posts::id).cached().load(conn).unwrap()
//! };
//! let page = |posts: &[Post]| {
//!     let ctx = minijinja::context! { posts => template::objects(posts) };
//!     env.get_template("list.html").unwrap().render(ctx).unwrap()
//! };
//! let rows = load(&mut conn);
//! assert_eq!(page(&rows), "<li>Hello</li><li>World</li>"); // rendered
//! assert_eq!(page(&rows), "<li>Hello</li><li>World</li>"); // from the cache
//! assert_eq!(conn.cache().stats().hits, 1); // the second render
//!
//! let _: Post = conn.save_changes(&Post { id: 2, title: "Moon".into() }).unwrap();
//! let rows = load(&mut conn);
//! assert_eq!(page(&rows), "<li>Hello</li><li>Moon</li>"); // rendered again
//! ```
//!
//! # Why a function and `{% call %}`
//!
//! minijinja, unlike Jinja2, has no custom block tags. A Rust function called through a
//! `{% call %}` block receives the block as its `caller` keyword argument and renders it when
//! it chooses to, which is all a fragment cache needs. This needs minijinja's `macros` feature
//! (`{% call %}` is part of it) and its `serde` feature (models become template values through
//! serde); the dependency enables nothing else, so an application keeps control of the rest
//! (builtins, loaders, ...). It is minijinja 3: [`register`] takes a
//! `minijinja::Environment` of that major version, which is why the crate is re-exported here
//! as [`template::minijinja`](crate::template::minijinja). Use the re-export, or depend on
//! minijinja 3 yourself (Cargo then builds one copy).
//!
//! # Objects
//!
//! A model reaches a template through [`object`] (one row) or [`objects`] (a list): a template
//! value that shows the model's serialized fields (`post.title`) and carries the row's object
//! key, which is what ties a fragment to the row. `cache()` accepts such an object, a list of
//! them (lists nest and are flattened, so `[post, comments]` works), or `none`; anything else
//! is a template error, since a plain map carries no row identity.
//!
//! # The key
//!
//! A fragment's key is a blake3 hash ([`QueryKeyBuilder`]) of: the name of the template whose
//! code calls `cache()` and a hash of that template's source (a deploy that edits the
//! template never serves the old output), the fragment name, every object's key and a hash of
//! its serialized fields (in order, with the nesting of the lists), and the `extra` value
//! serialized as JSON. It is then combined with the rows' flush lists under the cache's
//! prefix, as [`Cache::cached_with_all`] does. Because the rows' contents are in the key, a
//! list that gained a row, or a row re-read with new values, is a new fragment even before any
//! invalidation reached the old one.
//!
//! The block must depend only on what the key holds: the objects, the template and `extra`.
//! Anything else it shows (the signed-in user, the language, data read by a function inside
//! the block) goes into `extra`.
//!
//! # Invalidation
//!
//! The rendered fragment is registered on the flush list of every object passed, and on the
//! children list of every row an [`object`] points at through a declared foreign key, with
//! the fill protocol of every cached read (see `docs/src/protocol.md`): a write to one of the
//! objects' tables while the block renders leaves nothing cached. A write that invalidates
//! any of the rows deletes the fragment: the write helpers, `invalidate`, a write to a row
//! that points at one of them through a declared foreign key, and a write to a row one of
//! them points at (an add-on's author), as for a cached query that holds the object.
//!
//! An empty list (or `none`) has no flush list: its fragment is cached only when `timeout=` is
//! given, and then lives for that long (keyed by its content, so a list that gains a row is a
//! new fragment at once); without a timeout the block is rendered every time.
//!
//! # Failures
//!
//! The cache being down, or a fragment that does not decode, only means the block is rendered:
//! never a template error. An error inside the block is the template's own and is returned as
//! is (nothing is cached).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use caching_core::{Cache, FlushTarget, KeySpace, ObjectKey, QueryKeyBuilder, Timeout};
use serde::Serialize;

pub use minijinja;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Serde, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use crate::model::CachedModel;

/// The name [`register`] gives the template function.
pub const FUNCTION: &str = "cache";

/// Lists in `cache()`'s objects nest at most this deep (a guard against a self-referencing
/// value, which minijinja's objects can build).
const MAX_NESTING: usize = 16;

/// Adds the `cache` function to `env`; fragments are stored in `cache` (the cache the models
/// are read and written through, so that their writes reach the fragments).
///
/// In a template: `{% call cache(objects, "name", timeout=600, extra=[..]) %}...{% endcall %}`,
/// where `objects` is an [`object`], a list of them ([`objects`]) or `none`, `"name"` tells
/// two fragments of one template apart, `timeout=` is a whole number of seconds (`none`, or
/// left out: the cache's default timeout), and `extra=` is any value more key parts are
/// serialized from.
///
/// ```
/// use caching_diesel::template::{self, minijinja};
/// use caching_diesel::{Cache, ObjectKey};
///
/// let mut env = minijinja::Environment::new();
/// template::register(&mut env, Cache::locmem());
/// env.add_template("t.html", r#"{% call cache(user, "card", timeout=60) %}<b>{{ user.name }}</b>{% endcall %}"#).unwrap();
/// let user = template::object_with_key(ObjectKey::new("users", &["1"]), &serde_json::json!({ "name": "fliggy" }));
/// let html = env.get_template("t.html").unwrap().render(minijinja::context! { user }).unwrap();
/// assert_eq!(html, "<b>fliggy</b>");
/// ```
pub fn register(env: &mut Environment<'_>, cache: Cache) {
    env.add_function(
        FUNCTION,
        move |state: &mut State, objects: Value, name: Cow<'_, str>, kwargs: Kwargs| {
            fragment(&cache, state, &objects, &name, &kwargs)
        },
    );
}

/// `model` as a template value for `cache()`: its fields as serde serializes them
/// (`post.title`), carrying its object key.
///
/// ```
/// use caching_diesel::template::{self, minijinja};
/// use caching_diesel::CachedModel;
/// # use caching_diesel::ObjectKey;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Post { id: i32, title: String }
/// # impl CachedModel for Post {
/// #     const TABLE: &'static str = "posts";
/// #     const FINGERPRINT: &'static str = "Post";
/// #     fn object_key(&self) -> ObjectKey { ObjectKey::new("posts", &[self.id.to_string()]) }
/// #     fn foreign_keys(&self) -> Vec<ObjectKey> { Vec::new() }
/// # }
///
/// let post = template::object(&Post { id: 1, title: "Hello".into() });
/// let env = minijinja::Environment::new();
/// let out = env.render_str("{{ post.id }}: {{ post.title }}", minijinja::context! { post }).unwrap();
/// assert_eq!(out, "1: Hello");
/// ```
pub fn object<M: CachedModel>(model: &M) -> Value {
    cached_object(model.object_key(), model.foreign_keys(), model)
}

/// Every model of `models` as an [`object`], in a list the template can loop over.
///
/// ```
/// use caching_diesel::template::{self, minijinja};
/// # use caching_diesel::{CachedModel, ObjectKey};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Post { id: i32 }
/// # impl CachedModel for Post {
/// #     const TABLE: &'static str = "posts";
/// #     const FINGERPRINT: &'static str = "Post";
/// #     fn object_key(&self) -> ObjectKey { ObjectKey::new("posts", &[self.id.to_string()]) }
/// #     fn foreign_keys(&self) -> Vec<ObjectKey> { Vec::new() }
/// # }
///
/// let posts = template::objects(&[Post { id: 1 }, Post { id: 2 }]);
/// let env = minijinja::Environment::new();
/// let out = env.render_str("{% for p in posts %}{{ p.id }};{% endfor %}", minijinja::context! { posts }).unwrap();
/// assert_eq!(out, "1;2;");
/// ```
pub fn objects<'a, M, I>(models: I) -> Value
where
    M: CachedModel + 'a,
    I: IntoIterator<Item = &'a M>,
{
    Value::from(models.into_iter().map(object).collect::<Vec<_>>())
}

/// Any serializable value as a template object for `cache()`, tied to the row `key` names:
/// for rows that are not a [`CachedModel`] (a `CachedRow` report line naming its row, a view
/// model built from one).
///
/// A value that does not serialize becomes an invalid value: using it in a template is an
/// error.
///
/// ```
/// use caching_diesel::template::{self, minijinja};
/// use caching_diesel::ObjectKey;
///
/// #[derive(serde::Serialize)]
/// struct Card { name: String, addons: i64 }
///
/// let card = Card { name: "fliggy".into(), addons: 2 };
/// let user = template::object_with_key(ObjectKey::new("users", &["1"]), &card);
/// let env = minijinja::Environment::new();
/// let out = env.render_str("{{ user.name }} ({{ user.addons }})", minijinja::context! { user }).unwrap();
/// assert_eq!(out, "fliggy (2)");
/// ```
pub fn object_with_key<T: Serialize + ?Sized>(key: ObjectKey, value: &T) -> Value {
    cached_object(key, Vec::new(), value)
}

/// A [`CachedObject`] of `value`, the row `key` names, pointing at `parents`.
fn cached_object<T: Serialize + ?Sized>(
    key: ObjectKey,
    parents: Vec<ObjectKey>,
    value: &T,
) -> Value {
    let json = match serde_json::to_vec(value) {
        Ok(json) => json,
        Err(e) => {
            return Value::from(Error::new(
                ErrorKind::InvalidOperation,
                format!("{key} cannot be a template object: {e}"),
            ))
        }
    };
    let fields = Value::from(Serde(value));
    let names = match fields.kind() {
        ValueKind::Map => fields.try_iter().map(Iterator::collect).unwrap_or_default(),
        _ => Vec::new(),
    };
    Value::from_object(CachedObject {
        key,
        parents,
        content: *blake3::hash(&json).as_bytes(),
        fields,
        names,
    })
}

/// A row in a template: its serialized fields, its identity and a hash of its contents.
#[derive(Debug)]
struct CachedObject {
    key: ObjectKey,
    /// The rows it points at through foreign keys ([`object`] of a model): the fragment is
    /// registered on their children lists too.
    parents: Vec<ObjectKey>,
    /// blake3 of the row's JSON: part of the fragment key.
    content: [u8; 32],
    fields: Value,
    /// The field names, when the row serializes to a map.
    names: Vec<Value>,
}

impl Object for CachedObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.fields.get_item(key).ok().filter(|v| !v.is_undefined())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.names.clone())
    }

    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.fields, f)
    }
}

/// The `cache()` function: look the fragment up, or render the block and cache it.
fn fragment(
    cache: &Cache,
    state: &mut State,
    objects: &Value,
    name: &str,
    kwargs: &Kwargs,
) -> Result<Value, Error> {
    let caller: Option<Value> = kwargs.get("caller")?;
    let Some(caller) = caller else {
        return Err(usage(format!(
            "{FUNCTION}() wraps a block: {{% call {FUNCTION}(objects, \"{name}\") %}}...{{% endcall %}}"
        )));
    };
    let timeout = timeout_arg(kwargs.get("timeout")?)?;
    let extra: Option<Value> = kwargs.get("extra")?;
    kwargs.assert_all_used()?;

    let mut key = QueryKeyBuilder::new("fragment");
    key.part("template", state.name().as_bytes());
    key.part("source", &source_hash(state)?);
    key.part("fragment", name.as_bytes());
    let mut rows = Vec::new();
    collect_objects(objects, &mut key, &mut rows, 0)?;
    if let Some(extra) = extra.as_ref().filter(|e| !e.is_undefined()) {
        let bytes = serde_json::to_vec(extra)
            .map_err(|e| usage(format!("{FUNCTION}(): extra= does not serialize: {e}")))?;
        key.part("extra", &bytes);
    }

    let mut render = || -> Result<String, Error> {
        let out = caller.call(state, &[])?;
        Ok(out.as_str().map_or_else(|| out.to_string(), str::to_string))
    };
    let html = match (rows.is_empty(), timeout) {
        // Nothing could ever delete it: only an explicit timeout caches it.
        (true, None) => render()?,
        (_, timeout) => cache.try_cached_with_all(
            &rows,
            &format!("fragment.{}", key.finish_hex()),
            timeout.unwrap_or(Timeout::Default),
            render,
        )?,
    };
    // The block's output was escaped when it was rendered: mark it safe, or it would be
    // escaped twice.
    Ok(Value::from_safe_string(html))
}

/// A row a fragment is registered on: its flush list, and its parents' children lists.
struct FragmentRow {
    key: ObjectKey,
    parents: Vec<ObjectKey>,
}

impl FlushTarget for FragmentRow {
    fn flush_key(&self, keys: &KeySpace) -> Option<String> {
        self.key.flush_key(keys)
    }
    fn tables(&self) -> Vec<String> {
        self.key.tables()
    }
    fn parents(&self) -> Vec<ObjectKey> {
        self.parents.clone()
    }
}

/// Adds `objects` to the key and their rows to `rows`: an object, a (nested) list of them,
/// or `none`.
fn collect_objects(
    objects: &Value,
    key: &mut QueryKeyBuilder,
    rows: &mut Vec<FragmentRow>,
    depth: usize,
) -> Result<(), Error> {
    if let Some(o) = objects.downcast_object_ref::<CachedObject>() {
        key.part("object", o.key.as_str().as_bytes());
        key.part("content", &o.content);
        rows.push(FragmentRow {
            key: o.key.clone(),
            parents: o.parents.clone(),
        });
        return Ok(());
    }
    match objects.kind() {
        ValueKind::None => {
            key.part("none", b"");
            Ok(())
        }
        ValueKind::Seq | ValueKind::Iterable if depth < MAX_NESTING => {
            key.part("list", b"[");
            for item in objects.try_iter()? {
                collect_objects(&item, key, rows, depth + 1)?;
            }
            key.part("list", b"]");
            Ok(())
        }
        kind => Err(usage(format!(
            "{FUNCTION}(): the objects must come from caching_diesel::template::object or \
             objects (or be lists of them, or none), not a {kind}"
        ))),
    }
}

/// `timeout=`: `None` when absent or `none`, else a whole number of seconds.
fn timeout_arg(value: Option<Value>) -> Result<Option<Timeout>, Error> {
    let Some(value) = value.filter(|v| !v.is_none() && !v.is_undefined()) else {
        return Ok(None);
    };
    let seconds = value
        .as_i64()
        .filter(|s| *s > 0 && value.kind() == ValueKind::Number)
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| {
            usage(format!(
                "{FUNCTION}(): timeout= is a whole number of seconds above 0, not {value}"
            ))
        })?;
    Timeout::After(Duration::from_secs(seconds))
        .validate()
        .map(Some)
        .map_err(|e| usage(format!("{FUNCTION}(): {e}")))
}

/// blake3 of the source of the template that is running, computed once per render.
fn source_hash(state: &mut State) -> Result<Vec<u8>, Error> {
    let memo = format!("caching_diesel.template.source:{}", state.name());
    if let Some(hash) = state
        .get_temp(&memo)
        .and_then(|v| v.as_bytes().map(<[u8]>::to_vec))
    {
        return Ok(hash);
    }
    let template = state.env().get_template(state.name()).map_err(|_| {
        usage(format!(
            "{FUNCTION}(): template {:?} is not in the environment; fragments are keyed by \
             their template's source, so add it with add_template (or a loader)",
            state.name()
        ))
    })?;
    let hash = blake3::hash(template.source().as_bytes())
        .as_bytes()
        .to_vec();
    state.set_temp(&memo, Value::from_bytes(hash.clone()));
    Ok(hash)
}

fn usage(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}
