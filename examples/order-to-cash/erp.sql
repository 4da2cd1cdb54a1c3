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

CREATE TABLE sales_orders (
    order_no     bigserial PRIMARY KEY,
    crm_order_id uuid UNIQUE NOT NULL,
    customer_no  bigint NOT NULL REFERENCES customers,
    currency     char(3) NOT NULL,
    total        numeric(19,4) NOT NULL,
    status       text NOT NULL,
    ordered_at   timestamptz NOT NULL
);

CREATE TABLE sales_order_lines (
    line_no     bigserial PRIMARY KEY,
    crm_line_id uuid UNIQUE NOT NULL,
    order_no    bigint NOT NULL REFERENCES sales_orders ON DELETE CASCADE,
    sku         text NOT NULL,
    quantity    numeric(12,3) NOT NULL,
    unit_price  numeric(19,4) NOT NULL
);
CREATE INDEX ON sales_order_lines (order_no);
