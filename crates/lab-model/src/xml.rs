//! Just enough of XML to find elements in the libvirt definitions `lab` renders: a scanner
//! that walks the tags, skipping comments, CDATA and processing instructions as libxml2 does
//! (a comment ends at the first `-->` after `<!--`), reading through quoted attribute values,
//! and keeping each tag's depth, so `<name>` means the root's own child, not one nested in
//! `<metadata>`. The domain name check and the marker put into a domain both use it, so they
//! see the same elements.

/// An element's start tag: where it starts and ends (just past `>`), how deep it is (the root
/// is 0), and whether it closes itself (`<metadata/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub start: usize,
    pub end: usize,
    pub depth: usize,
    pub empty: bool,
}

/// Whether the document has a document type declaration (`<!DOCTYPE`, and with it `<!ENTITY`
/// and friends) outside comments and CDATA. A DTD's internal subset can hold text that looks
/// like elements to this scanner but not to libxml2 (an entity's value): definitions that
/// `lab` checks must have none.
pub fn has_doctype(xml: &str) -> bool {
    let mut at = 0;
    while let Some(offset) = xml[at..].find('<') {
        let start = at + offset;
        let rest = &xml[start..];
        let skipped = [("<!--", "-->"), ("<![CDATA[", "]]>")]
            .into_iter()
            .find(|(open, _)| rest.starts_with(open));
        match skipped {
            Some((open, close)) => {
                let body = start + open.len();
                match xml[body..].find(close) {
                    Some(end) => at = body + end + close.len(),
                    None => return false,
                }
            }
            None if rest.starts_with("<!") => return true,
            None => at = start + 1,
        }
    }
    false
}

/// The first start tag of element `name` at `depth` (0: the root, 1: its children). `None`
/// also for a document this scanner cannot read to that point (an unclosed comment or tag).
pub fn find_start(xml: &str, name: &str, depth: usize) -> Option<Tag> {
    let mut at = 0;
    let mut level = 0usize;
    while let Some(offset) = xml[at..].find('<') {
        let start = at + offset;
        let rest = &xml[start..];
        let skipped = [
            ("<!--", "-->"),
            ("<![CDATA[", "]]>"),
            ("<?", "?>"),
            ("<!", ">"),
        ]
        .into_iter()
        .find(|(open, _)| rest.starts_with(open));
        if let Some((open, close)) = skipped {
            let body = start + open.len();
            at = body + xml[body..].find(close)? + close.len();
            continue;
        }
        let end = start + tag_end(rest)?;
        let tag = &xml[start..end];
        if tag.starts_with("</") {
            level = level.checked_sub(1)?;
        } else {
            let empty = tag.ends_with("/>");
            let tag_name = tag[1..]
                .split(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
                .next()
                .unwrap_or("");
            if tag_name == name && level == depth {
                return Some(Tag {
                    start,
                    end,
                    depth: level,
                    empty,
                });
            }
            if !empty {
                level += 1;
            }
        }
        at = end;
    }
    None
}

/// Where a tag that starts `rest` ends (just past its `>`), reading through quoted values.
fn tag_end(rest: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in rest.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i + 1),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

/// The text of the root's child element `name` (trimmed): `<domain><name>r1</name>` → `r1`.
pub fn child_text(xml: &str, name: &str) -> Option<String> {
    let tag = find_start(xml, name, 1)?;
    if tag.empty {
        return Some(String::new());
    }
    let close = format!("</{name}>");
    let text = &xml[tag.end..];
    let inner = &text[..text.find(&close)?];
    // Markup inside (a comment, a child) is not a plain name.
    if inner.contains('<') {
        return None;
    }
    Some(inner.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doctype_is_found_outside_comments_only() {
        let decoy = "<!DOCTYPE domain [ <!ENTITY decoy \"x> <domain><name>r1</name></domain> \"> ]>\n<domain><name>victim</name></domain>";
        assert!(has_doctype(decoy));
        assert!(has_doctype("<?xml version='1.0'?><!ENTITY e 'x'><domain/>"));
        assert!(!has_doctype(
            "<!-- <!DOCTYPE x> --><domain><![CDATA[<!DOCTYPE]]></domain>"
        ));
        assert!(!has_doctype("<domain><name>r1</name></domain>"));
    }

    #[test]
    fn the_roots_own_children_are_found_outside_comments() {
        let xml = "<?xml version='1.0'?>\n<!-- <name>decoy</name> <metadata> -->\n\
                   <domain type='kvm' note='a > b'><metadata><x:name>no</x:name><name>nested</name></metadata>\
                   <namespace>x</namespace><name> r1 </name><metadata/></domain>";
        assert_eq!(child_text(xml, "name").as_deref(), Some("r1"));
        let m = find_start(xml, "metadata", 1).unwrap();
        assert!(!m.empty);
        assert_eq!(&xml[m.start..m.end], "<metadata>");
        let root = find_start(xml, "domain", 0).unwrap();
        assert_eq!(
            &xml[root.start..root.end],
            "<domain type='kvm' note='a > b'>"
        );
    }

    #[test]
    fn what_libxml2_reads_as_a_comment_is_one_here_too() {
        // `<!-->` opens a comment; it does not close one.
        let xml = "<domain><!--><name>vpp0-1</name>--><name>other</name></domain>";
        assert_eq!(child_text(xml, "name").as_deref(), Some("other"));
        assert_eq!(find_start("<a><!-- <name>x</name>", "name", 1), None);
        assert_eq!(find_start("<a><![CDATA[<name>]]></a>", "name", 1), None);
        assert_eq!(find_start("<?>", "name", 0), None);
        assert_eq!(child_text("<a><name><!-- x -->y</name></a>", "name"), None);
        // Ends that are not well-formed stop the scan, never panic or loop.
        for odd in [
            "<",
            "<a",
            "<a b='>",
            "</a>",
            "<a></a></b>",
            "<!--",
            "<a><name>x",
        ] {
            let _ = child_text(odd, "name");
            let _ = find_start(odd, "a", 0);
        }
    }
}
