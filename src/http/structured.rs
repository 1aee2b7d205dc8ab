//! Just enough of RFC 8941 Structured Fields to read a Dictionary strictly:
//! any syntax error rejects the whole field.

/// A member's value; only the types cache directives use keep their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Integer(i64),
    Decimal,
    String(String),
    Token,
    Bytes,
    Boolean(bool),
    InnerList,
}

/// Parses a Dictionary (RFC 8941 §4.2.2); a repeated key keeps its last
/// value. `None` on any syntax error.
pub(super) fn dictionary(input: &str) -> Option<Vec<(String, Value)>> {
    let mut parser = Parser {
        input: input.as_bytes(),
        at: 0,
    };
    parser.dictionary()
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip(&mut self, set: &[u8]) {
        while self.peek().is_some_and(|b| set.contains(&b)) {
            self.at += 1;
        }
    }

    fn dictionary(&mut self) -> Option<Vec<(String, Value)>> {
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip(b" ");
        while self.peek().is_some() {
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.at += 1;
                self.item_or_inner_list()?
            } else {
                self.parameters()?;
                Value::Boolean(true)
            };
            members.retain(|(seen, _)| *seen != key);
            members.push((key, value));
            self.skip(b" \t");
            if self.peek().is_none() {
                break;
            }
            if self.bump()? != b',' {
                return None;
            }
            self.skip(b" \t");
            self.peek()?; // a trailing comma is an error
        }
        Some(members)
    }

    fn key(&mut self) -> Option<String> {
        let start = self.at;
        match self.bump()? {
            b'a'..=b'z' | b'*' => {}
            _ => return None,
        }
        while self
            .peek()
            .is_some_and(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'))
        {
            self.at += 1;
        }
        String::from_utf8(self.input[start..self.at].to_vec()).ok()
    }

    fn item_or_inner_list(&mut self) -> Option<Value> {
        if self.peek() == Some(b'(') {
            self.at += 1;
            loop {
                self.skip(b" ");
                if self.peek() == Some(b')') {
                    self.at += 1;
                    self.parameters()?;
                    return Some(Value::InnerList);
                }
                self.bare_item()?;
                self.parameters()?;
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return None;
                }
            }
        }
        let value = self.bare_item()?;
        self.parameters()?;
        Some(value)
    }

    /// Parameters are parsed for validity and ignored (RFC 9213 §2.1).
    fn parameters(&mut self) -> Option<()> {
        while self.peek() == Some(b';') {
            self.at += 1;
            self.skip(b" ");
            self.key()?;
            if self.peek() == Some(b'=') {
                self.at += 1;
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b':' => self.bytes(),
            b'?' => self.boolean(),
            b'*' | b'a'..=b'z' | b'A'..=b'Z' => self.token(),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Value> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let start = self.at;
        let mut dot = None;
        while let Some(byte) = self.peek() {
            match byte {
                b'0'..=b'9' => {}
                b'.' if dot.is_none() => {
                    if self.at - start > 12 {
                        return None;
                    }
                    dot = Some(self.at);
                }
                _ => break,
            }
            self.at += 1;
            if dot.is_none() && self.at - start > 15 {
                return None;
            }
        }
        let digits = &self.input[start..self.at];
        match dot {
            None => {
                if digits.is_empty() {
                    return None;
                }
                let magnitude = std::str::from_utf8(digits).ok()?.parse::<i64>().ok()?;
                Some(Value::Integer(if negative {
                    -magnitude
                } else {
                    magnitude
                }))
            }
            Some(dot) => {
                let fraction = self.at - dot - 1;
                (dot > start && (1..=3).contains(&fraction)).then_some(Value::Decimal)
            }
        }
    }

    fn string(&mut self) -> Option<Value> {
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.bump()? {
                b'\\' => match self.bump()? {
                    byte @ (b'"' | b'\\') => out.push(char::from(byte)),
                    _ => return None,
                },
                b'"' => return Some(Value::String(out)),
                byte @ 0x20..=0x7e => out.push(char::from(byte)),
                _ => return None,
            }
        }
    }

    fn token(&mut self) -> Option<Value> {
        self.at += 1;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&b))
        {
            self.at += 1;
        }
        Some(Value::Token)
    }

    fn bytes(&mut self) -> Option<Value> {
        self.at += 1;
        loop {
            match self.bump()? {
                b':' => return Some(Value::Bytes),
                b if b.is_ascii_alphanumeric() || b"+/=".contains(&b) => {}
                _ => return None,
            }
        }
    }

    fn boolean(&mut self) -> Option<Value> {
        self.at += 1;
        match self.bump()? {
            b'1' => Some(Value::Boolean(true)),
            b'0' => Some(Value::Boolean(false)),
            _ => None,
        }
    }
}
