-- CRM schema of the order-to-cash example.
CREATE TABLE accounts (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    email           text,
    country         char(2),
    currency        char(3) NOT NULL,
    credit_limit    numeric(18,2),
    erp_customer_no bigint,
    open_balance    numeric(18,2),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts,
    name       text NOT NULL,
    email      text
);

CREATE TABLE opportunities (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts,
    title      text NOT NULL,
    stage      text NOT NULL DEFAULT 'open',
    amount     numeric(18,2),
    currency   char(3) NOT NULL
);

CREATE TABLE orders (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts,
    currency   char(3) NOT NULL,
    total      numeric(18,2) NOT NULL,
    status     text NOT NULL,
    ordered_at timestamptz NOT NULL
);

CREATE TABLE order_lines (
    id         uuid PRIMARY KEY,
    order_id   uuid NOT NULL REFERENCES orders ON DELETE CASCADE,
    sku        text NOT NULL,
    quantity   numeric(12,3) NOT NULL,
    unit_price numeric(18,4) NOT NULL
);
CREATE INDEX ON order_lines (order_id);
