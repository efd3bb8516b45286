use caching_diesel::{cached_method, Cache};

struct Post;

impl Post {
    #[cached_method]
    fn count(cache: &Cache) -> usize {
        let _ = cache;
        1
    }
}

fn main() {}
