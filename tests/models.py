"""Mapped classes shared by the tests."""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm


class Base(sa_orm.DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50), unique=True)
    value: sa_orm.Mapped[int] = sa_orm.mapped_column(default=0)


class Audit(Base):
    __tablename__ = "audits"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    message: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(100))


class Animal(Base):
    __tablename__ = "animals"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    kind: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20))
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50), default="")

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}


class Dog(Animal):
    """Joined-table inheritance."""

    __tablename__ = "dogs"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(sa.ForeignKey("animals.id"), primary_key=True)
    tricks: sa_orm.Mapped[int] = sa_orm.mapped_column(default=0)

    __mapper_args__ = {"polymorphic_identity": "dog"}


class Cat(Animal):
    """Single-table inheritance."""

    __mapper_args__ = {"polymorphic_identity": "cat"}


deferred_metadata = sa.MetaData()
"""Tables with a DEFERRABLE INITIALLY DEFERRED constraint (SQLite and PostgreSQL only)."""

customers = sa.Table(
    "customers",
    deferred_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
)

orders = sa.Table(
    "orders",
    deferred_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "customer_id",
        sa.Integer,
        sa.ForeignKey("customers.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)


class Tag(Base):
    """A composite primary key."""

    __tablename__ = "tags"

    namespace: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20), primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20), primary_key=True)
    label: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50), default="")


class Author(Base):
    __tablename__ = "authors"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    books: sa_orm.Mapped[list[Book]] = sa_orm.relationship(back_populates="author")


class Book(Base):
    __tablename__ = "books"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    title: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    author_id: sa_orm.Mapped[int | None] = sa_orm.mapped_column(sa.ForeignKey("authors.id"))
    author: sa_orm.Mapped[Author | None] = sa_orm.relationship(back_populates="books")
    pages: sa_orm.Mapped[list[Page]] = sa_orm.relationship(
        back_populates="book", cascade="all, delete-orphan", order_by="Page.id"
    )


class Page(Base):
    """Deleted with its book (a cascade), or once taken out of it (an orphan)."""

    __tablename__ = "pages"

    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    text: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50), default="")
    book_id: sa_orm.Mapped[int] = sa_orm.mapped_column(sa.ForeignKey("books.id"))
    book: sa_orm.Mapped[Book] = sa_orm.relationship(back_populates="pages")
