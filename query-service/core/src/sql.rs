//! The one checked text: what a statement may look like before anything parses, plans or stores
//! it, shared by the gateway (which checks it) and the worker (which runs exactly that text).
//!
//! ```text
//!  SQL text ──► size limit ──► shape (nesting bound, from tokens only) ──► `?` → `$n`
//!           ──► one parsed statement
//! ```
//!
//! A parsed statement is a tree that parsers, visitors and `Drop` walk recursively, so its depth
//! must be bounded before it exists: [`check_shape`] bounds it from the token stream, which the
//! tokenizer produces iteratively. Placeholders are renumbered by splicing `$n` over each `?`
//! token in the original text; no other byte changes, so quoting and escapes stay exactly as the
//! client wrote them.

use std::borrow::Cow;

use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// Default longest SQL text accepted: generated dashboard SQL stays far below it, and it caps the
/// memory and parse time one request can cost.
pub const DEFAULT_MAX_SQL_BYTES: usize = 1 << 20;
/// Deepest expression tree accepted. Parsing, walking and dropping a tree this deep stays within
/// a 2 MiB thread stack in a debug build (a test below proves it), with room to spare for the
/// planner, which protects its own recursion.
pub const MAX_SQL_DEPTH: usize = 500;
/// Recursion limit of the parser: DataFusion's default (`sql_parser.recursion_limit`), so the
/// gateway refuses exactly the nesting the worker's parser would.
const PARSER_RECURSION_LIMIT: usize = 50;

/// Why a statement's text was refused before planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The text is longer than the limit.
    #[error("the SQL text is {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The statement nests deeper than [`MAX_SQL_DEPTH`].
    #[error(
        "the statement is nested too deeply (more than {limit} levels of operators, \
         parentheses or set operations); split it or use IN lists"
    )]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The text is empty or only comments.
    #[error("the SQL text is empty")]
    Empty,
    /// The tokenizer or parser refused it.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// More than one statement in one request.
    #[error("send one statement per request ({0} were sent)")]
    MultipleStatements(usize),
    /// A statement that is not a query (DDL, DML, settings, COPY, …): refused at the gateway,
    /// whose classification covers queries and catalog metadata only.
    #[error("only queries can run here; {0} statements are refused")]
    NotAQuery(String),
    /// Both `?` and `$n` placeholders, whose numbering would collide.
    #[error("use either ? or $1, $2, … placeholders in one statement, not both")]
    MixedPlaceholders,
}

/// Refuses text over `max_bytes` or nesting deeper than [`MAX_SQL_DEPTH`], from tokens alone.
///
/// The bound is conservative: every operator token of an expression chain may nest one level
/// (a left-deep `a + b + c`), every bracket, `CASE … END` and set operation one more. Commas and
/// clause keywords end a chain, since what follows is a sibling, not a child.
pub fn check_shape(sql: &str, max_bytes: usize) -> Result<(), SqlError> {
    check_tokens(&tokenize(sql, max_bytes)?)
}

/// The tokens of text within `max_bytes`, with their positions.
fn tokenize(sql: &str, max_bytes: usize) -> Result<Vec<TokenWithSpan>, SqlError> {
    if sql.len() > max_bytes {
        return Err(SqlError::TooLarge {
            bytes: sql.len(),
            limit: max_bytes,
        });
    }
    Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Syntax(e.to_string()))
}

/// [`check_shape`] on tokens already made.
fn check_tokens(tokens: &[TokenWithSpan]) -> Result<(), SqlError> {
    let mut bound = DepthBound::default();
    let mut meaningful = false;
    for TokenWithSpan { token, .. } in tokens {
        if !matches!(token, Token::Whitespace(_) | Token::EOF) {
            meaningful = true;
        }
        if bound.push(token) > MAX_SQL_DEPTH {
            return Err(SqlError::TooDeep {
                limit: MAX_SQL_DEPTH,
            });
        }
    }
    if !meaningful {
        return Err(SqlError::Empty);
    }
    Ok(())
}

/// One bracket level of [`DepthBound`].
#[derive(Debug, Default, Clone, Copy)]
struct Level {
    /// Operators since the last comma or clause keyword.
    chain: usize,
    /// Set operations (`UNION`, …) at this level: they nest left-deep across clauses.
    set_ops: usize,
}

/// The running upper bound on tree depth over a token stream.
#[derive(Debug)]
struct DepthBound {
    levels: Vec<Level>,
    /// Σ (chain + set_ops + 1) over `levels`.
    depth: usize,
}

impl Default for DepthBound {
    fn default() -> Self {
        Self {
            levels: vec![Level::default()],
            depth: 1,
        }
    }
}

impl DepthBound {
    /// Accounts for `token`; returns the bound after it.
    fn push(&mut self, token: &Token) -> usize {
        match classify(token) {
            Role::Leaf => {}
            Role::Operator => {
                self.top().chain += 1;
                self.depth += 1;
            }
            Role::SetOperator => {
                self.top().set_ops += 1;
                self.depth += 1;
            }
            Role::Separator => {
                let chain = std::mem::take(&mut self.top().chain);
                self.depth -= chain;
            }
            Role::Open => {
                self.levels.push(Level::default());
                self.depth += 1;
            }
            Role::Close => {
                if self.levels.len() > 1 {
                    let level = self.levels.pop().expect("more than one level");
                    self.depth -= level.chain + level.set_ops + 1;
                }
            }
            Role::EndOfStatement => *self = Self::default(),
        }
        self.depth
    }

    fn top(&mut self) -> &mut Level {
        self.levels.last_mut().expect("the outermost level stays")
    }
}

/// What a token does to nesting.
enum Role {
    Leaf,
    Operator,
    SetOperator,
    Separator,
    Open,
    Close,
    EndOfStatement,
}

fn classify(token: &Token) -> Role {
    match token {
        Token::Whitespace(_) | Token::EOF | Token::Period | Token::Placeholder(_) => Role::Leaf,
        Token::Number(..) | Token::Char(_) => Role::Leaf,
        Token::Comma => Role::Separator,
        Token::SemiColon => Role::EndOfStatement,
        Token::LParen | Token::LBracket | Token::LBrace => Role::Open,
        Token::RParen | Token::RBracket | Token::RBrace => Role::Close,
        Token::Word(word) if word.quote_style.is_some() => Role::Leaf,
        Token::Word(word) => match word.keyword {
            Keyword::NoKeyword => Role::Leaf,
            Keyword::CASE => Role::Open,
            Keyword::END => Role::Close,
            Keyword::UNION | Keyword::EXCEPT | Keyword::INTERSECT | Keyword::MINUS => {
                Role::SetOperator
            }
            Keyword::SELECT
            | Keyword::FROM
            | Keyword::WHERE
            | Keyword::GROUP
            | Keyword::HAVING
            | Keyword::ORDER
            | Keyword::BY
            | Keyword::LIMIT
            | Keyword::OFFSET
            | Keyword::ON
            | Keyword::USING
            | Keyword::WHEN
            | Keyword::THEN
            | Keyword::ELSE
            | Keyword::AS
            | Keyword::JOIN
            | Keyword::WINDOW
            | Keyword::QUALIFY
            | Keyword::WITH
            | Keyword::VALUES => Role::Separator,
            // Any other keyword may be an operator (AND, NOT, IS, IN, …); counting the rest
            // too only makes the bound looser.
            _ => Role::Operator,
        },
        // String literals of every kind.
        token if is_literal(token) => Role::Leaf,
        _ => Role::Operator,
    }
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// Rewrites `?` placeholders (JDBC, ADBC) to the numbered `$1..$n` DataFusion binds, by
/// splicing over each `?` token where the tokenizer found it: strings, quoted names and
/// comments keep their `?`, and every other byte stays as written.
pub fn number_placeholders(sql: &str) -> Result<Cow<'_, str>, SqlError> {
    if !sql.contains('?') {
        return Ok(Cow::Borrowed(sql));
    }
    splice_placeholders(sql, &tokenize(sql, usize::MAX)?)
}

/// [`number_placeholders`] on the tokens of `sql`.
fn splice_placeholders<'a>(
    sql: &'a str,
    tokens: &[TokenWithSpan],
) -> Result<Cow<'a, str>, SqlError> {
    if !sql.contains('?') {
        return Ok(Cow::Borrowed(sql));
    }
    let mut questions = Vec::new();
    let mut numbered = false;
    for token in tokens {
        match &token.token {
            Token::Placeholder(p) if p == "?" => questions.push(token.span.start),
            Token::Placeholder(p) if p.starts_with('$') => numbered = true,
            _ => {}
        }
    }
    if questions.is_empty() {
        return Ok(Cow::Borrowed(sql));
    }
    if numbered {
        return Err(SqlError::MixedPlaceholders);
    }
    // Token locations are (line, column) in characters, both from 1; map them to byte offsets.
    let mut offsets = Vec::with_capacity(questions.len());
    let mut wanted = questions.iter().peekable();
    let (mut line, mut column) = (1u64, 1u64);
    for (at, c) in sql.char_indices() {
        while let Some(next) = wanted.peek() {
            if (next.line, next.column) == (line, column) {
                offsets.push(at);
                wanted.next();
            } else {
                break;
            }
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    let mut out = String::with_capacity(sql.len() + 2 * offsets.len());
    let mut from = 0;
    for (n, at) in offsets.iter().enumerate() {
        if sql.as_bytes().get(*at) != Some(&b'?') {
            // The tokenizer and this walk disagree about positions: refuse rather than guess.
            return Err(SqlError::Syntax("cannot locate a ? placeholder".into()));
        }
        out.push_str(&sql[from..*at]);
        out.push('$');
        out.push_str(&(n + 1).to_string());
        from = at + 1;
    }
    out.push_str(&sql[from..]);
    Ok(Cow::Owned(out))
}

/// Parses exactly one statement of text that passed [`check_shape`], with the parser, dialect
/// and recursion limit the worker's DataFusion session uses, so both see the same statement.
pub fn parse_one(sql: &str) -> Result<Statement, SqlError> {
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| SqlError::Syntax(e.strip_backtrace()))?;
    match statements.len() {
        0 => Err(SqlError::Empty),
        1 => Ok(statements.pop_front().expect("one statement")),
        n => Err(SqlError::MultipleStatements(n)),
    }
}

/// The text a worker runs for `sql`: shape checked, placeholders numbered. The gateway checks
/// and signs this text; the worker runs it as it is.
pub fn normalise(sql: &str, max_bytes: usize) -> Result<String, SqlError> {
    let tokens = tokenize(sql, max_bytes)?;
    check_tokens(&tokens)?;
    Ok(splice_placeholders(sql, &tokens)?.into_owned())
}

#[cfg(test)]
mod tests;
