//! Just enough of XML to find an element in the libvirt definitions `lab` renders: tags are
//! found outside comments, CDATA and processing instructions, and `<name>` never matches
//! `<namespace>`. Both the check of a rendered domain and the marker put into it use this, so
//! they see the same elements.

/// An element's start tag in a document: where it starts and ends (just past `>`), and whether
/// it closes itself (`<metadata/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub start: usize,
    pub end: usize,
    pub empty: bool,
}

/// The first start tag of element `name` in `xml` that is not inside a comment, CDATA or a
/// processing instruction.
pub fn find_start(xml: &str, name: &str) -> Option<Tag> {
    let mut at = 0;
    while let Some(offset) = xml[at..].find('<') {
        let start = at + offset;
        let rest = &xml[start..];
        // Skip what is not markup.
        for (open, close) in [("<!--", "-->"), ("<![CDATA[", "]]>"), ("<?", "?>")] {
            if rest.starts_with(open) {
                at = match rest.find(close) {
                    Some(end) => start + end + close.len(),
                    None => return None,
                };
                break;
            }
        }
        if at > start {
            continue;
        }
        let after = &rest[1..];
        let boundary = after
            .strip_prefix(name)
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c == '>' || c == '/' || c.is_ascii_whitespace());
        let end = start + rest.find('>')? + 1;
        if boundary {
            return Some(Tag {
                start,
                end,
                empty: xml[..end].ends_with("/>"),
            });
        }
        at = end;
    }
    None
}

/// The text of the first `<name>` element (trimmed), outside comments.
pub fn first_text(xml: &str, name: &str) -> Option<String> {
    let tag = find_start(xml, name)?;
    if tag.empty {
        return Some(String::new());
    }
    let close = format!("</{name}>");
    let text = &xml[tag.end..];
    Some(text[..text.find(&close)?].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_found_outside_comments_only() {
        let xml = "<?xml version='1.0'?>\n<!-- <name>decoy</name> <metadata> -->\n<domain type='kvm'>\
                   <namespace>x</namespace><name> r1 </name><metadata/></domain>";
        assert_eq!(first_text(xml, "name").as_deref(), Some("r1"));
        let m = find_start(xml, "metadata").unwrap();
        assert!(m.empty);
        assert_eq!(&xml[m.start..m.end], "<metadata/>");
        assert_eq!(
            find_start(xml, "domain").map(|t| &xml[t.start..t.end]),
            Some("<domain type='kvm'>")
        );
        assert_eq!(find_start("<!-- <name>x</name>", "name"), None);
        assert_eq!(find_start("<a><![CDATA[<name>]]></a>", "name"), None);
    }
}
