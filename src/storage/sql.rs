//! `Sql`: a query put together at run time (lists of ids, optional filters, many rows in one
//! `INSERT`), with `$N` placeholders, which both databases read. (sqlx's own `QueryBuilder`
//! writes `?` for `Any`, which PostgreSQL does not accept.) The subset of `QueryBuilder`'s
//! interface that storage uses, under the same names.

use std::fmt::{Display, Write};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::{Query, QueryAs};
use sqlx::{Any, Arguments, Encode, FromRow, Type};

pub(super) struct Sql<'args> {
    text: String,
    arguments: Option<AnyArguments<'args>>,
    count: usize,
}

impl<'args> Sql<'args> {
    pub fn new(text: impl Into<String>) -> Sql<'args> {
        Sql { text: text.into(), arguments: Some(AnyArguments::default()), count: 0 }
    }

    pub fn push(&mut self, text: impl Display) -> &mut Sql<'args> {
        write!(self.text, "{text}").expect("writing to a String cannot fail");
        self
    }

    /// Appends a placeholder for `value`, bound to it.
    pub fn push_bind<T>(&mut self, value: T) -> &mut Sql<'args>
    where
        T: 'args + Encode<'args, Any> + Type<Any>,
    {
        let arguments = self.arguments.as_mut().expect("an Sql is built once");
        // Encoding into `Any` only copies the value: it cannot fail for the types storage binds.
        arguments.add(value).expect("a value storage binds encodes");
        self.count += 1;
        write!(self.text, "${}", self.count).expect("writing to a String cannot fail");
        self
    }

    /// Items pushed through the answer are separated by `separator`.
    pub fn separated(&mut self, separator: &'static str) -> Separated<'_, 'args> {
        Separated { sql: self, separator, first: true }
    }

    /// `VALUES (…), (…)`: one parenthesised row per item, its values pushed by `row`.
    pub fn push_values<I>(
        &mut self,
        items: impl IntoIterator<Item = I>,
        mut row: impl FnMut(Separated<'_, 'args>, I),
    ) -> &mut Sql<'args> {
        self.push("VALUES ");
        for (index, item) in items.into_iter().enumerate() {
            if index > 0 {
                self.push(", ");
            }
            self.push("(");
            row(self.separated(", "), item);
            self.push(")");
        }
        self
    }

    pub fn build(&mut self) -> Query<'_, Any, AnyArguments<'_>> {
        let arguments = self.arguments.take().expect("an Sql is built once");
        sqlx::query_with(&self.text, arguments)
    }

    pub fn build_query_as<T>(&mut self) -> QueryAs<'_, Any, T, AnyArguments<'_>>
    where
        T: for<'r> FromRow<'r, AnyRow>,
    {
        let arguments = self.arguments.take().expect("an Sql is built once");
        sqlx::query_as_with(&self.text, arguments)
    }
}

/// Pushes into an `Sql`, with a separator before every item but the first.
pub(super) struct Separated<'sql, 'args> {
    sql: &'sql mut Sql<'args>,
    separator: &'static str,
    first: bool,
}

impl<'args> Separated<'_, 'args> {
    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.sql.push(self.separator);
        }
    }

    pub fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'args + Encode<'args, Any> + Type<Any>,
    {
        self.separate();
        self.sql.push_bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::Sql;

    #[test]
    fn placeholders_are_numbered_in_order_across_lists_and_rows() {
        let mut sql = Sql::new("SELECT * FROM t WHERE a = ");
        sql.push_bind(1_i64).push(" AND b IN (");
        let mut list = sql.separated(", ");
        for value in ["x", "y"] {
            list.push_bind(value);
        }
        sql.push(") AND c = ").push_bind("z");
        assert_eq!(sql.text, "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3) AND c = $4");

        let mut insert = Sql::new("INSERT INTO t (a, b) ");
        insert.push_values([(1_i64, "p"), (2, "q")], |mut row, (a, b)| {
            row.push_bind(a).push_bind(b);
        });
        assert_eq!(insert.text, "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        assert_eq!(insert.count, 4);
    }
}
