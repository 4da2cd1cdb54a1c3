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
    payment_terms   text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- email is written by both systems; duplex needs the old row of an update
-- to tell which fields it changed.
ALTER TABLE accounts REPLICA IDENTITY FULL;
CREATE UNIQUE INDEX accounts_erp_customer_no_key ON accounts (erp_customer_no);

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
    ordered_at timestamptz NOT NULL,
    erp_order_no bigint UNIQUE,
    erp_status   text
);

CREATE TABLE order_lines (
    id         uuid PRIMARY KEY,
    order_id   uuid NOT NULL REFERENCES orders ON DELETE CASCADE,
    sku        text NOT NULL,
    quantity   numeric(12,3) NOT NULL,
    unit_price numeric(18,4) NOT NULL
);
CREATE INDEX ON order_lines (order_id);

CREATE TABLE invoices (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    erp_invoice_no bigint UNIQUE NOT NULL,
    account_id     uuid NOT NULL REFERENCES accounts,
    order_id       uuid REFERENCES orders,
    currency       char(3) NOT NULL,
    amount         numeric(18,2) NOT NULL,
    paid_amount    numeric(18,2) NOT NULL,
    status         text NOT NULL,
    due_date       date NOT NULL
);
CREATE INDEX ON invoices (account_id);

-- The ERP's ledger entries of an account, known by the ERP's key, the pair
-- (erp_company, erp_entry_no).
CREATE TABLE ledger_entries (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    erp_company  text NOT NULL,
    erp_entry_no bigint NOT NULL,
    account_id   uuid NOT NULL REFERENCES accounts,
    invoice_id   uuid NOT NULL REFERENCES invoices,
    kind         text NOT NULL,
    currency     char(3) NOT NULL,
    amount       numeric(18,2) NOT NULL,
    posted_at    timestamptz NOT NULL,
    UNIQUE (erp_company, erp_entry_no)
);
CREATE INDEX ON ledger_entries (account_id);
