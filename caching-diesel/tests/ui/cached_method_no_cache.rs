use caching_diesel::cached_method;

struct Post;

impl Post {
    #[cached_method]
    fn count(&self) -> usize {
        1
    }
}

fn main() {}
