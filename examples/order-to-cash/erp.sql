-- ERP schema of the order-to-cash example.
CREATE TABLE customers (
    customer_no        bigserial PRIMARY KEY,
    crm_account_id     uuid UNIQUE NOT NULL,
    name               text NOT NULL,
    email              text,
    country            char(2),
    currency           char(3) NOT NULL,
    credit_limit_minor bigint,
    open_balance       numeric(19,4) NOT NULL DEFAULT 0,
    payment_terms      text NOT NULL DEFAULT 'NET30',
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- email is written by both systems; duplex needs the old row of an update
-- to tell which fields it changed, and deletes keyed by crm_account_id.
ALTER TABLE customers REPLICA IDENTITY FULL;

CREATE TABLE sales_orders (
    order_no     bigserial PRIMARY KEY,
    crm_order_id uuid UNIQUE NOT NULL,
    customer_no  bigint NOT NULL REFERENCES customers,
    currency     char(3) NOT NULL,
    total        numeric(19,4) NOT NULL,
    status       text NOT NULL,
    ordered_at   timestamptz NOT NULL,
    fulfilment_status text NOT NULL DEFAULT 'open'
);
-- Deletes must carry crm_order_id, the canonical key.
ALTER TABLE sales_orders REPLICA IDENTITY FULL;

CREATE TABLE sales_order_lines (
    line_no     bigserial PRIMARY KEY,
    crm_line_id uuid UNIQUE NOT NULL,
    order_no    bigint NOT NULL REFERENCES sales_orders ON DELETE CASCADE,
    sku         text NOT NULL,
    quantity    numeric(12,3) NOT NULL,
    unit_price  numeric(19,4) NOT NULL
);
CREATE INDEX ON sales_order_lines (order_no);

CREATE TABLE invoices (
    invoice_no  bigserial PRIMARY KEY,
    order_no    bigint NOT NULL REFERENCES sales_orders,
    customer_no bigint NOT NULL REFERENCES customers,
    currency    char(3) NOT NULL,
    amount      numeric(19,4) NOT NULL,
    paid_amount numeric(19,4) NOT NULL DEFAULT 0,
    status      text NOT NULL,
    issued_at   timestamptz NOT NULL,
    due_date    date NOT NULL
);
CREATE INDEX ON invoices (customer_no);

CREATE TABLE payments (
    payment_no  bigserial PRIMARY KEY,
    invoice_no  bigint NOT NULL REFERENCES invoices,
    amount      numeric(19,4) NOT NULL,
    currency    char(3) NOT NULL,
    received_at timestamptz NOT NULL
);

-- The general ledger: each company (legal entity) numbers its entries, so
-- an entry is known by the pair (company, entry_no). Invoicing posts the
-- receivable, a payment its settlement (a negative amount); a posting
-- corrected to another company is renumbered there (both key columns
-- change).
CREATE TABLE ledger_entries (
    company     text NOT NULL,
    entry_no    bigint NOT NULL,
    customer_no bigint NOT NULL REFERENCES customers,
    invoice_no  bigint NOT NULL REFERENCES invoices,
    kind        text NOT NULL,
    currency    char(3) NOT NULL,
    amount      numeric(19,4) NOT NULL,
    posted_at   timestamptz NOT NULL,
    PRIMARY KEY (company, entry_no)
);
CREATE INDEX ON ledger_entries (customer_no);
