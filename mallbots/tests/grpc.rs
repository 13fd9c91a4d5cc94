//! gRPC, end to end over a real socket: each module's service called as a client would (the
//! happy path, bad input → `InvalidArgument`, an unknown id → `NotFound`, an admin call without
//! the token → `Unauthenticated`), what it changes seen over REST too (the same application
//! functions), and server reflection listing every service. `fuzz`: every unary method and
//! the bots' stream with generated requests, never `Internal`.

#[path = "grpc/fuzz.rs"]
mod fuzz;
mod support;

use mallbots::grpc::pb::basketspb::basket_service_client::BasketServiceClient;
use mallbots::grpc::pb::basketspb::{AddItemRequest, CheckoutBasketRequest, GetBasketRequest, StartBasketRequest};
use mallbots::grpc::pb::customerspb::customers_service_client::CustomersServiceClient;
use mallbots::grpc::pb::customerspb::*;
use mallbots::grpc::pb::orderingpb::ordering_service_client::OrderingServiceClient;
use mallbots::grpc::pb::orderingpb::{CancelOrderRequest, GetOrderRequest};
use mallbots::grpc::pb::paymentspb::payments_service_client::PaymentsServiceClient;
use mallbots::grpc::pb::paymentspb::{
    AuthorizePaymentRequest, GetInvoiceRequest, ListOpenInvoicesRequest, PayInvoiceRequest,
};
use mallbots::grpc::pb::storespb::stores_service_client::StoresServiceClient;
use mallbots::grpc::pb::storespb::*;
use support::{RunningApp, TOKEN, spawn_running_app};
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn channel(app: &RunningApp) -> Channel {
    let addr = app.t.grpc.expect("an app in this process serves gRPC");
    Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect over gRPC")
}

/// `message` with the admin token.
fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("ascii"));
    request
}

/// Asserts `result` failed with `code`.
fn refused<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, what: &str) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
        Ok(response) => panic!("{what}: expected {code:?}, got {:?}", response.into_inner()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_over_grpc() {
    stores_scenario(spawn_running_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_over_grpc() {
    customers_scenario(spawn_running_app().await).await;
}

/// The same calls through the gateway (nginx, HTTP/2) to the stores and customers processes of
/// a cluster; reflection through it lists every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_and_customers_over_grpc_through_the_gateway() {
    let Some(app) = support::spawn_cluster_with(&[], &["stores", "customers"], &[]).await else { return };
    let services = list_services(&app).await;
    assert!(services.iter().any(|s| s == "searchpb.SearchService"), "{services:?}");
    let mut stores = StoresServiceClient::new(channel(&app).await);
    let mut search = mallbots::grpc::pb::searchpb::search_service_client::SearchServiceClient::new(channel(&app).await);
    let get = mallbots::grpc::pb::searchpb::GetOrderRequest { id: "x".into() };
    refused(search.get_order(admin(get)).await, Code::Unavailable, "search does not run in this cluster");
    refused(stores.get_store(GetStoreRequest { id: "nope".into() }).await, Code::NotFound, "through nginx");
    let app = stores_scenario(app).await;
    customers_scenario(app).await.stop().await;
}

async fn stores_scenario(app: RunningApp) -> RunningApp {
    let mut stores = StoresServiceClient::new(channel(&app).await);
    let new_store = || CreateStoreRequest { name: "Books".into(), location: "L1".into() };

    refused(stores.create_store(new_store()).await, Code::Unauthenticated, "no token");
    let mut wrong = Request::new(new_store());
    wrong.metadata_mut().insert("authorization", "Bearer nope".parse().expect("ascii"));
    refused(stores.create_store(wrong).await, Code::Unauthenticated, "a wrong token");

    let id = stores.create_store(admin(new_store())).await.expect("create").into_inner().id;
    stores.enable_participation(admin(EnableParticipationRequest { id: id.clone() })).await.expect("enable");
    refused(
        stores.enable_participation(admin(EnableParticipationRequest { id: id.clone() })).await,
        Code::FailedPrecondition,
        "enabled twice",
    );
    let store = stores.get_store(GetStoreRequest { id: id.clone() }).await.expect("get").into_inner().store;
    let store = store.expect("a store");
    assert_eq!((store.name.as_str(), store.location.as_str(), store.participating), ("Books", "L1", true));
    let participating = stores.get_participating_stores(GetParticipatingStoresRequest {}).await.expect("list");
    assert_eq!(participating.into_inner().stores.len(), 1);

    let product = AddProductRequest {
        store_id: id.clone(),
        name: "Treasury".into(),
        description: "an island".into(),
        sku: "T-1".into(),
        price: 9.99,
    };
    let product_id = stores.add_product(admin(product.clone())).await.expect("add product").into_inner().id;
    stores
        .increase_product_price(admin(IncreaseProductPriceRequest { id: product_id.clone(), price: 10.5 }))
        .await
        .expect("increase");
    let catalog = stores.get_catalog(GetCatalogRequest { store_id: id.clone() }).await.expect("catalog").into_inner();
    assert_eq!(catalog.products.len(), 1);
    assert_eq!((catalog.products[0].id.as_str(), catalog.products[0].price), (product_id.as_str(), 10.5));
    // The same application functions behind REST.
    assert_eq!(app.t.get(&format!("/api/stores/products/{product_id}")).await.body["price"], 10.5);

    refused(stores.create_store(admin(CreateStoreRequest::default())).await, Code::InvalidArgument, "a blank name");
    refused(
        stores.add_product(admin(AddProductRequest { price: 9.999, ..product.clone() })).await,
        Code::InvalidArgument,
        "three fraction digits",
    );
    refused(
        stores.add_product(admin(AddProductRequest { price: -1.0, ..product.clone() })).await,
        Code::InvalidArgument,
        "a negative price",
    );
    refused(stores.get_store(GetStoreRequest { id: String::new() }).await, Code::InvalidArgument, "no id");
    refused(stores.get_store(GetStoreRequest { id: "nope".into() }).await, Code::NotFound, "an unknown store");
    refused(stores.get_product(GetProductRequest { id: "nope".into() }).await, Code::NotFound, "an unknown product");
    refused(
        stores.add_product(admin(AddProductRequest { store_id: "nope".into(), ..product })).await,
        Code::NotFound,
        "a product of an unknown store",
    );
    app
}

async fn customers_scenario(app: RunningApp) -> RunningApp {
    let mut customers = CustomersServiceClient::new(channel(&app).await);
    let id = customers
        .register_customer(RegisterCustomerRequest { name: "Ada".into(), sms_number: "555 0100".into() })
        .await
        .expect("register")
        .into_inner()
        .id;
    customers.authorize_customer(AuthorizeCustomerRequest { id: id.clone() }).await.expect("an enabled customer");
    customers
        .change_sms_number(ChangeSmsNumberRequest { id: id.clone(), sms_number: "555 0199".into() })
        .await
        .expect("change the number");
    let customer = customers.get_customer(GetCustomerRequest { id: id.clone() }).await.expect("get").into_inner();
    let customer = customer.customer.expect("a customer");
    assert_eq!((customer.name.as_str(), customer.sms_number.as_str(), customer.enabled), ("Ada", "555 0199", true));

    refused(
        customers.disable_customer(DisableCustomerRequest { id: id.clone() }).await,
        Code::Unauthenticated,
        "disabling needs the token",
    );
    customers.disable_customer(admin(DisableCustomerRequest { id: id.clone() })).await.expect("disable");
    refused(
        customers.authorize_customer(AuthorizeCustomerRequest { id: id.clone() }).await,
        Code::FailedPrecondition,
        "a disabled customer",
    );
    assert_eq!(app.t.get(&format!("/api/customers/{id}")).await.body["enabled"], false, "REST sees it");

    refused(
        customers.register_customer(RegisterCustomerRequest { name: " ".into(), sms_number: "555".into() }).await,
        Code::InvalidArgument,
        "a blank name",
    );
    refused(
        customers.get_customer(GetCustomerRequest { id: "nope".into() }).await,
        Code::NotFound,
        "an unknown customer",
    );
    refused(
        customers.enable_customer(admin(EnableCustomerRequest { id: "nope".into() })).await,
        Code::NotFound,
        "enabling an unknown customer",
    );
    app
}

/// No text may hold the NUL character (U+0000), which PostgreSQL cannot store: every gRPC call
/// refuses one in any string field — a store name, a customer name, a search filter nested in
/// the request — with `InvalidArgument`, never `Internal`, as REST answers 400; nothing is
/// created. On PostgreSQL, where a NUL that got through would fail the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_is_refused_with_invalid_argument_on_postgres() {
    use mallbots::grpc::pb::searchpb::search_service_client::SearchServiceClient;
    use mallbots::grpc::pb::searchpb::{Filters, SearchOrdersRequest};
    let Some(app) = support::spawn_running_app_on(support::Backend::Postgres).await else { return };
    let channel = channel(&app).await;
    // Refused before any handler runs, naming the field.
    let nul_refused = |result: Result<(), tonic::Status>, field: &str| match result {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "a NUL in {field}: {status:?}");
            let expected = format!("{field}: {}", mallbots::error::NUL_REFUSED);
            assert_eq!(status.message(), expected, "a NUL in {field}");
        }
        Ok(()) => panic!("a NUL in {field}: expected InvalidArgument, the call succeeded"),
    };

    let mut stores = StoresServiceClient::new(channel.clone());
    let store = CreateStoreRequest { name: "Bo\0oks".into(), location: "L1".into() };
    nul_refused(stores.create_store(admin(store)).await.map(drop), "name");
    let mut customers = CustomersServiceClient::new(channel.clone());
    let customer = RegisterCustomerRequest { name: "A\0da".into(), sms_number: "555 0100".into() };
    nul_refused(customers.register_customer(customer).await.map(drop), "name");
    let mut search = SearchServiceClient::new(channel);
    let filters = Filters { customer_id: "c\0".into(), ..Default::default() };
    let request = SearchOrdersRequest { filters: Some(filters), limit: 10, ..Default::default() };
    nul_refused(search.search_orders(admin(request)).await.map(drop), "filters.customer_id");

    let listed = stores.get_stores(GetStoresRequest {}).await.expect("stores").into_inner().stores;
    assert!(listed.is_empty(), "no store was created: {listed:?}");
    let pool = sqlx::PgPool::connect(&app.t.config.database).await.expect("connect to PostgreSQL");
    let schema = mallbots::module::schema(&app.t.config.namespace, "customers");
    let customers: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{schema}\".customers_customers")))
            .fetch_one(&pool)
            .await
            .expect("count the customers");
    assert_eq!(customers, 0, "no customer was registered");
    pool.close().await;
    app.stop().await;
}

/// A kiosk's order over gRPC only: a payment authorized, a basket started, filled and checked
/// out, the order followed to `approved` and canceled; baskets, ordering and payments refuse bad
/// input, unknown ids and (invoices) a missing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_grpc() {
    let app = spawn_running_app().await;
    let channel = channel(&app).await;
    let (mut stores, mut customers) =
        (StoresServiceClient::new(channel.clone()), CustomersServiceClient::new(channel.clone()));
    let (mut baskets, mut ordering) =
        (BasketServiceClient::new(channel.clone()), OrderingServiceClient::new(channel.clone()));
    let mut payments = PaymentsServiceClient::new(channel);

    let store = stores.create_store(admin(CreateStoreRequest { name: "Books".into(), location: "L1".into() })).await;
    let store = store.expect("store").into_inner().id;
    stores.enable_participation(admin(EnableParticipationRequest { id: store.clone() })).await.expect("enable");
    let product = AddProductRequest { store_id: store, name: "Treasury".into(), price: 9.99, ..Default::default() };
    let product = stores.add_product(admin(product)).await.expect("product").into_inner().id;
    let customer = customers
        .register_customer(RegisterCustomerRequest { name: "Ada".into(), sms_number: "555".into() })
        .await
        .expect("register")
        .into_inner()
        .id;

    let authorize = |amount: f64| AuthorizePaymentRequest { customer_id: customer.clone(), amount };
    refused(payments.authorize_payment(authorize(1.001)).await, Code::InvalidArgument, "three fraction digits");
    let payment = payments.authorize_payment(authorize(19.98)).await.expect("authorize").into_inner().id;
    refused(
        baskets.start_basket(StartBasketRequest { customer_id: String::new() }).await,
        Code::InvalidArgument,
        "no customer",
    );
    let basket = baskets.start_basket(StartBasketRequest { customer_id: customer.clone() }).await.expect("start");
    let basket = basket.into_inner().id;
    let add = AddItemRequest { id: basket.clone(), product_id: product.clone(), quantity: 2 };
    // The product reaches the baskets' catalog through the broker.
    support::eventually("the product reaches the baskets' catalog", || {
        let (mut baskets, add) = (baskets.clone(), add.clone());
        async move { baskets.add_item(add).await.is_ok() }
    })
    .await;
    refused(
        baskets.add_item(AddItemRequest { quantity: 0, ..add.clone() }).await,
        Code::InvalidArgument,
        "a quantity of 0",
    );
    refused(baskets.get_basket(GetBasketRequest { id: "nope".into() }).await, Code::NotFound, "an unknown basket");
    let seen = baskets.get_basket(GetBasketRequest { id: basket.clone() }).await.expect("get").into_inner();
    let seen = seen.basket.expect("a basket");
    assert_eq!((seen.items.len(), seen.total, seen.status.as_str()), (1, 19.98, "open"));
    baskets.checkout_basket(CheckoutBasketRequest { id: basket.clone(), payment_id: payment }).await.expect("checkout");

    support::eventually("the order is approved", || {
        let (mut ordering, id) = (ordering.clone(), basket.clone());
        async move {
            ordering.get_order(GetOrderRequest { id }).await.is_ok_and(|r| {
                r.into_inner().order.is_some_and(|o| o.status == "approved" && !o.shopping_id.is_empty())
            })
        }
    })
    .await;
    refused(ordering.get_order(GetOrderRequest { id: "nope".into() }).await, Code::NotFound, "an unknown order");
    ordering.cancel_order(CancelOrderRequest { id: basket.clone() }).await.expect("cancel");
    refused(
        ordering.cancel_order(CancelOrderRequest { id: basket.clone() }).await,
        Code::FailedPrecondition,
        "canceled twice",
    );
    assert_eq!(app.t.get(&format!("/api/ordering/{basket}")).await.body["status"], "canceled", "REST sees it");

    refused(
        payments.get_invoice(GetInvoiceRequest { order_id: basket.clone() }).await,
        Code::Unauthenticated,
        "invoices need the token",
    );
    refused(
        payments.get_invoice(admin(GetInvoiceRequest { order_id: basket })).await,
        Code::NotFound,
        "a canceled order before it was ready has no invoice",
    );
    refused(
        payments.pay_invoice(admin(PayInvoiceRequest { id: "nope".into() })).await,
        Code::NotFound,
        "an unknown invoice",
    );
    app.stop().await;
}

/// The admin side over gRPC after an order: depot's shopping list assigned and completed,
/// payments' invoice paid, notifications' SMS, search's order (the book's request shape),
/// analytics' figures and projection, and dead letters; every one refuses a call without the
/// token, an unknown id and bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_side_over_grpc() {
    use mallbots::grpc::pb::adminpb::dead_letters_service_client::DeadLettersServiceClient;
    use mallbots::grpc::pb::adminpb::{GetDeadLetterRequest, ListDeadLettersRequest};
    use mallbots::grpc::pb::analyticspb::analytics_service_client::AnalyticsServiceClient;
    use mallbots::grpc::pb::analyticspb::{GetProjectionRequest, GetSummaryRequest};
    use mallbots::grpc::pb::depotpb::depot_service_client::DepotServiceClient;
    use mallbots::grpc::pb::depotpb::{
        AssignShoppingListRequest, CompleteShoppingListRequest, GetShoppingListRequest, ListShoppingListsRequest,
    };
    use mallbots::grpc::pb::notificationspb::ListNotificationsRequest;
    use mallbots::grpc::pb::notificationspb::notifications_service_client::NotificationsServiceClient;
    use mallbots::grpc::pb::searchpb::search_service_client::SearchServiceClient;
    use mallbots::grpc::pb::searchpb::{Filters, SearchOrdersRequest};
    let app = spawn_running_app().await;
    let t = &app.t;
    let product = support::catalog(t).await;
    let customer = support::register(t, "Ada").await;
    let order = support::order(t, &customer, &product, serde_json::json!(19.98)).await;
    support::status_becomes(t, &order, "approved").await;

    let channel = channel(&app).await;
    let mut depot = DepotServiceClient::new(channel.clone());
    refused(depot.list_shopping_lists(ListShoppingListsRequest::default()).await, Code::Unauthenticated, "no token");
    refused(
        depot.list_shopping_lists(admin(ListShoppingListsRequest { status: "lost".into() })).await,
        Code::InvalidArgument,
        "an unknown status",
    );
    let lists = depot.list_shopping_lists(admin(ListShoppingListsRequest { status: "available".into() })).await;
    let list = lists.expect("lists").into_inner().shopping_lists.into_iter().find(|l| l.order_id == order);
    let list = list.expect("the order's shopping list");
    assert_eq!((list.stops.len(), list.stops[0].items[0].quantity), (1, 2));
    refused(
        depot.get_shopping_list(admin(GetShoppingListRequest { id: "nope".into() })).await,
        Code::NotFound,
        "an unknown list",
    );
    refused(
        depot.complete_shopping_list(admin(CompleteShoppingListRequest { id: list.id.clone() })).await,
        Code::FailedPrecondition,
        "completing a list no bot has",
    );
    depot
        .assign_shopping_list(admin(AssignShoppingListRequest { id: list.id.clone(), bot_id: "bot-1".into() }))
        .await
        .expect("assign");
    depot.complete_shopping_list(admin(CompleteShoppingListRequest { id: list.id.clone() })).await.expect("complete");
    support::status_becomes(t, &order, "ready").await;

    let mut payments = PaymentsServiceClient::new(channel.clone());
    let invoice = |order: String| admin(GetInvoiceRequest { order_id: order });
    support::eventually("the invoice exists", || {
        let (mut payments, request) = (payments.clone(), invoice(order.clone()));
        async move { payments.get_invoice(request).await.is_ok() }
    })
    .await;
    let found = payments.get_invoice(invoice(order.clone())).await.expect("invoice").into_inner().invoice;
    let found = found.expect("an invoice");
    assert_eq!((found.amount, found.status.as_str()), (19.98, "pending"));
    let open = payments.list_open_invoices(admin(ListOpenInvoicesRequest { limit: 0 })).await.expect("open invoices");
    assert_eq!(open.into_inner().invoices, std::slice::from_ref(&found));
    refused(
        payments.list_open_invoices(admin(ListOpenInvoicesRequest { limit: 101 })).await,
        Code::InvalidArgument,
        "limit 101",
    );
    refused(payments.list_open_invoices(ListOpenInvoicesRequest::default()).await, Code::Unauthenticated, "no token");
    payments.pay_invoice(admin(PayInvoiceRequest { id: found.id })).await.expect("pay");
    let open = payments.list_open_invoices(admin(ListOpenInvoicesRequest { limit: 10 })).await.expect("open invoices");
    assert!(open.into_inner().invoices.is_empty(), "the paid invoice is not open");
    support::status_becomes(t, &order, "completed").await;

    let mut notifications = NotificationsServiceClient::new(channel.clone());
    support::eventually("three SMS", || {
        let mut notifications = notifications.clone();
        let request = admin(ListNotificationsRequest { customer_id: customer.clone() });
        async move {
            notifications.list_notifications(request).await.is_ok_and(|r| r.into_inner().notifications.len() == 3)
        }
    })
    .await;
    refused(
        notifications.list_notifications(admin(ListNotificationsRequest::default())).await,
        Code::InvalidArgument,
        "no customer",
    );

    let mut search = SearchServiceClient::new(channel.clone());
    let by_customer = || SearchOrdersRequest {
        filters: Some(Filters { customer_id: customer.clone(), status: "completed".into(), ..Default::default() }),
        limit: 10,
        ..Default::default()
    };
    support::eventually("search shows the completed order", || {
        let (mut search, request) = (search.clone(), admin(by_customer()));
        async move { search.search_orders(request).await.is_ok_and(|r| r.into_inner().orders.len() == 1) }
    })
    .await;
    let bad_time = SearchOrdersRequest {
        filters: Some(Filters { after: "yesterday".into(), ..Default::default() }),
        ..by_customer()
    };
    refused(search.search_orders(admin(bad_time)).await, Code::InvalidArgument, "a time that is not RFC 3339");
    refused(
        search.search_orders(admin(SearchOrdersRequest { limit: 101, ..by_customer() })).await,
        Code::InvalidArgument,
        "limit 101",
    );
    refused(search.search_orders(by_customer()).await, Code::Unauthenticated, "search needs the token");
    let newest = SearchOrdersRequest { newest_first: true, ..by_customer() };
    let newest = search.search_orders(admin(newest)).await.expect("newest first").into_inner();
    assert_eq!(newest.orders.len(), 1, "newest first finds the order too: {newest:?}");

    let mut analytics = AnalyticsServiceClient::new(channel.clone());
    support::eventually("analytics counts the completed order", || {
        let mut analytics = analytics.clone();
        async move {
            analytics.get_summary(admin(GetSummaryRequest {})).await.is_ok_and(|r| {
                let summary = r.into_inner();
                summary.orders_by_status.get("completed") == Some(&1) && summary.revenue == 19.98
            })
        }
    })
    .await;
    let summary = analytics.get_summary(admin(GetSummaryRequest {})).await.expect("summary").into_inner();
    let minutes: Vec<(f64, i64)> = summary.revenue_by_minute.iter().map(|m| (m.revenue, m.orders)).collect();
    assert_eq!(minutes, [(19.98, 1)], "{:?}", summary.revenue_by_minute);
    let outcomes = summary.saga_outcomes.expect("saga outcomes");
    assert_eq!((outcomes.approved, outcomes.rejected), (1, 0));
    let projection = analytics.get_projection(admin(GetProjectionRequest {})).await.expect("projection").into_inner();
    assert_eq!(projection.name, mallbots::modules::analytics::PROJECTION);
    refused(analytics.get_summary(GetSummaryRequest {}).await, Code::Unauthenticated, "analytics needs the token");

    let mut dead_letters = DeadLettersServiceClient::new(channel);
    let none = dead_letters.list_dead_letters(admin(ListDeadLettersRequest::default())).await.expect("list");
    assert!(none.into_inner().dead_letters.is_empty());
    refused(
        dead_letters
            .list_dead_letters(admin(ListDeadLettersRequest { status: "lost".into(), ..Default::default() }))
            .await,
        Code::InvalidArgument,
        "an unknown status",
    );
    refused(
        dead_letters.get_dead_letter(admin(GetDeadLetterRequest { id: "not-an-id".into() })).await,
        Code::InvalidArgument,
        "a malformed id",
    );
    refused(
        dead_letters.get_dead_letter(admin(GetDeadLetterRequest { id: uuid::Uuid::now_v7().to_string() })).await,
        Code::NotFound,
        "an unknown dead letter",
    );
    app.stop().await;
}

/// A reflection client (what `grpcurl list` does) finds every module's service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    let app = spawn_running_app().await;
    let names = list_services(&app).await;
    for expected in [
        "storespb.StoresService",
        "customerspb.CustomersService",
        "basketspb.BasketService",
        "orderingpb.OrderingService",
        "paymentspb.PaymentsService",
        "depotpb.DepotService",
        "notificationspb.NotificationsService",
        "searchpb.SearchService",
        "analyticspb.AnalyticsService",
        "adminpb.DeadLettersService",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    app.stop().await;
}

/// The services the app's reflection lists.
async fn list_services(app: &RunningApp) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(app).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        client.server_reflection_info(tokio_stream::once(request)).await.expect("reflection").into_inner();
    let reply = replies.message().await.expect("a reply").expect("not empty");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a list of services: {reply:?}")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

// --- shopper bots -------------------------------------------------------------------------------

fn bot(app: &RunningApp, id: &str) -> mallbots::bot::BotConfig {
    mallbots::bot::BotConfig {
        id: id.into(),
        url: format!("http://{}", app.t.grpc.expect("gRPC")),
        token: TOKEN.into(),
        pick: std::time::Duration::from_millis(20),
    }
}

/// The next shopping list the depot assigns on a bot's stream (other messages skipped).
async fn assignment(
    inbound: &mut tonic::Streaming<mallbots::grpc::pb::depotpb::DepotMessage>,
) -> mallbots::grpc::pb::depotpb::ShoppingList {
    use mallbots::grpc::pb::depotpb::depot_message::Message;
    loop {
        match inbound.message().await.expect("stream").and_then(|m| m.message) {
            Some(Message::Assignment(list)) => return list,
            Some(_) => {}
            None => panic!("the stream ended before an assignment"),
        }
    }
}

/// Pays the invoice of a ready order (payments, not depot), so it reaches `completed`.
async fn pay(t: &support::TestApp, order: &str) {
    let find = format!("/api/payments/invoices?orderId={order}");
    support::eventually("the invoice exists", || async {
        t.request(axum::http::Method::GET, &find, true, None, &[]).await.status == axum::http::StatusCode::OK
    })
    .await;
    let invoice = support::admin_get(t, &find).await;
    let id = invoice["id"].as_str().expect("invoice id");
    let paid = t.put(&format!("/api/payments/invoices/{id}/pay"), true, None).await;
    assert_eq!(paid.status, axum::http::StatusCode::NO_CONTENT);
}

/// N bots connected, M orders placed: every order reaches `completed` with no call to depot —
/// the bots take the lists over the stream, oldest first, pick every stop and complete them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_complete_every_order_with_no_call_to_depot() {
    use std::sync::atomic::Ordering;
    const ORDERS: usize = 6;
    let app = spawn_running_app().await;
    let t = &app.t;
    let (stats, stop) =
        (std::sync::Arc::new(mallbots::bot::BotStats::default()), tokio_util::sync::CancellationToken::new());
    let bots: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(mallbots::bot::run(bot(&app, &format!("bot-{n}")), stats.clone(), stop.clone())))
        .collect();
    let product = support::catalog(t).await;
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let customer = support::register(t, &format!("Shopper {i}")).await;
        orders.push(support::order(t, &customer, &product, serde_json::json!(19.98)).await);
    }
    for order in &orders {
        support::status_becomes(t, order, "ready").await;
        pay(t, order).await;
        support::status_becomes(t, order, "completed").await;
    }
    assert_eq!(stats.lists_completed.load(Ordering::Relaxed), ORDERS as u64);
    assert_eq!(stats.stops_picked.load(Ordering::Relaxed), ORDERS as u64, "one stop (one store) per list");
    let lists = support::admin_get(t, "/api/depot/shopping?status=completed").await;
    let by_bot: std::collections::BTreeSet<String> =
        lists.as_array().expect("lists").iter().filter_map(|l| l["botId"].as_str().map(str::to_owned)).collect();
    assert!(!by_bot.is_empty() && by_bot.iter().all(|b| b.starts_with("bot-")), "{by_bot:?}");
    stop.cancel();
    for b in bots {
        b.await.expect("bot task");
    }
    app.stop().await;
}

/// A bot that takes a list, picks a stop and disconnects loses the list: it is available again
/// (an event for each step) and another bot completes it. Hellos without the token, or that are
/// not hellos, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_gone_mid_list_loses_it_to_another() {
    use mallbots::grpc::pb::depotpb::shopper_bot_client::ShopperBotClient;
    use mallbots::grpc::pb::depotpb::{BotMessage, Heartbeat, Hello, StopPicked, bot_message};
    let app = spawn_running_app().await;
    let t = &app.t;
    let hello = |token: &str| BotMessage {
        message: Some(bot_message::Message::Hello(Hello { bot_id: "lazy".into(), token: token.into() })),
    };
    let mut client = ShopperBotClient::new(channel(&app).await);
    refused(client.connect(tokio_stream::iter([hello("nope")])).await, Code::Unauthenticated, "a wrong token");
    let heartbeat = BotMessage { message: Some(bot_message::Message::Heartbeat(Heartbeat {})) };
    refused(client.connect(tokio_stream::iter([heartbeat])).await, Code::InvalidArgument, "no hello");

    let product = support::catalog(t).await;
    let customer = support::register(t, "Ada").await;
    let order = support::order(t, &customer, &product, serde_json::json!(19.98)).await;

    // The lazy bot: takes the list, picks its stop, and goes.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(TOKEN)).await.expect("send");
    let mut inbound =
        client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("connect").into_inner();
    let list = assignment(&mut inbound).await;
    assert_eq!(list.order_id, order);
    let twin = client.clone().connect(tokio_stream::iter([hello(TOKEN)])).await;
    refused(twin, Code::AlreadyExists, "a second connection of a connected bot");
    let held = support::admin_get(t, &format!("/api/depot/shopping/{}", list.id)).await;
    assert_eq!(
        (held["status"].as_str(), held["botId"].as_str()),
        (Some("assigned"), Some("lazy")),
        "the twin took nothing"
    );
    let picked = StopPicked { shopping_id: list.id.clone(), store_id: list.stops[0].store_id.clone() };
    tx.send(BotMessage { message: Some(bot_message::Message::StopPicked(picked)) }).await.expect("send");
    support::eventually("the list is active", || async {
        support::admin_get(t, &format!("/api/depot/shopping/{}", list.id)).await["status"] == "active"
    })
    .await;
    drop(tx);
    drop(inbound);
    support::eventually("the list is available again", || async {
        let now = support::admin_get(t, &format!("/api/depot/shopping/{}", list.id)).await;
        now["status"] == "available" && now["botId"].is_null()
    })
    .await;

    // A good bot completes it.
    let (stats, stop) =
        (std::sync::Arc::new(mallbots::bot::BotStats::default()), tokio_util::sync::CancellationToken::new());
    let good = tokio::spawn(mallbots::bot::run(bot(&app, "good"), stats.clone(), stop.clone()));
    support::status_becomes(t, &order, "ready").await;
    let done = support::admin_get(t, &format!("/api/depot/shopping/{}", list.id)).await;
    assert_eq!((done["status"].as_str(), done["botId"].as_str()), (Some("completed"), Some("good")));
    stop.cancel();
    good.await.expect("bot task");
    app.stop().await;
}

/// The depot's bots over REST (`GET /api/depot/bots`) and gRPC (`ListBots`): a bot that says
/// hello is idle, busy with the list it is given, idle again once it completes it, and offline
/// when it disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depot_shows_its_bots_idle_busy_and_offline() {
    use mallbots::grpc::pb::depotpb::depot_service_client::DepotServiceClient;
    use mallbots::grpc::pb::depotpb::shopper_bot_client::ShopperBotClient;
    use mallbots::grpc::pb::depotpb::{BotMessage, Heartbeat, Hello, ListBotsRequest, ListCompleted, bot_message};
    let app = spawn_running_app().await;
    let t = &app.t;
    let bots = |query: &str| {
        let uri = format!("/api/depot/bots{query}");
        async move { support::admin_get(t, &uri).await }
    };
    assert_eq!(bots("").await, serde_json::json!([]));

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello { bot_id: "bot-a".into(), token: TOKEN.into() };
    tx.send(BotMessage { message: Some(bot_message::Message::Hello(hello)) }).await.expect("send");
    let mut client = ShopperBotClient::new(channel(&app).await);
    let mut inbound =
        client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("connect").into_inner();
    // Heartbeats, so a slow test machine does not make the bot fall silent.
    let heartbeats = tokio::spawn({
        let tx = tx.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let beat = BotMessage { message: Some(bot_message::Message::Heartbeat(Heartbeat {})) };
                if tx.send(beat).await.is_err() {
                    break;
                }
            }
        }
    });
    support::eventually("the bot is idle", || async {
        let all = bots("").await;
        all.as_array().is_some_and(|b| b.len() == 1)
            && all[0]["id"] == "bot-a"
            && all[0]["status"] == "idle"
            && all[0]["shoppingId"].is_null()
    })
    .await;
    let seen = bots("").await[0]["lastSeen"].as_str().expect("lastSeen").to_owned();
    assert!(chrono::DateTime::parse_from_rfc3339(&seen).is_ok(), "RFC 3339: {seen}");

    let product = support::catalog(t).await;
    let customer = support::register(t, "Ada").await;
    let order = support::order(t, &customer, &product, serde_json::json!(19.98)).await;
    let list = assignment(&mut inbound).await;
    assert_eq!(list.order_id, order);
    support::eventually("the bot is busy with the list", || async {
        let busy = bots("?status=busy").await;
        busy.as_array().is_some_and(|b| b.len() == 1) && busy[0]["shoppingId"] == list.id.as_str()
    })
    .await;
    assert_eq!(bots("?status=idle").await, serde_json::json!([]));
    let mut depot = DepotServiceClient::new(channel(&app).await);
    let listed = depot.list_bots(admin(ListBotsRequest { status: "busy".into() })).await.expect("ListBots");
    let listed = listed.into_inner().bots;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id.as_str(), listed[0].shopping_id.as_str()), ("bot-a", list.id.as_str()));
    assert!(!listed[0].last_seen.is_empty());
    refused(depot.list_bots(ListBotsRequest::default()).await, Code::Unauthenticated, "no token");
    refused(
        depot.list_bots(admin(ListBotsRequest { status: "lost".into() })).await,
        Code::InvalidArgument,
        "an unknown status",
    );

    let done = ListCompleted { shopping_id: list.id.clone() };
    tx.send(BotMessage { message: Some(bot_message::Message::Completed(done)) }).await.expect("send");
    support::status_becomes(t, &order, "ready").await;
    support::eventually("the bot is idle again", || async {
        let all = bots("").await;
        all[0]["status"] == "idle" && all[0]["shoppingId"].is_null()
    })
    .await;

    heartbeats.abort();
    let _ = heartbeats.await;
    drop(tx);
    drop(inbound);
    support::eventually("the bot is offline", || async {
        let all = bots("?status=offline").await;
        all.as_array().is_some_and(|b| b.len() == 1) && all[0]["id"] == "bot-a" && all[0]["shoppingId"].is_null()
    })
    .await;
    let unknown = t.request(axum::http::Method::GET, "/api/depot/bots?status=lost", true, None, &[]).await;
    assert_eq!(unknown.status, axum::http::StatusCode::BAD_REQUEST);
    assert_eq!(t.get("/api/depot/bots").await.status, axum::http::StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// A bot that never comes back after its depot process died (kill -9: no disconnect handled,
/// its row left busy and no longer vouched for) goes offline, and its list is released
/// (`ShoppingListReleased`, available again), by whichever depot process runs. The dead
/// process's row is written here as it would have left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_of_a_dead_depot_process_go_offline_and_lose_their_lists() {
    use herald::codec::EventSet;
    use herald::{StartFrom, SubscribeOptions};
    use herald_sql::any::{Conn, query};
    use mallbots::modules::depot::api::{EVENT_TOPIC, ShoppingListIntegrationEvent};
    let app = spawn_running_app().await;
    let t = &app.t;
    let product = support::catalog(t).await;
    let customer = support::register(t, "Ada").await;
    let order = support::order(t, &customer, &product, serde_json::json!(19.98)).await;
    support::status_becomes(t, &order, "approved").await;
    let list = support::shopping_list(t, &order).await;
    let id = list["id"].as_str().expect("shopping list id").to_owned();
    let assign =
        t.put(&format!("/api/depot/shopping/{id}/assign"), true, Some(serde_json::json!({ "botId": "ghost" }))).await;
    assert_eq!(assign.status, axum::http::StatusCode::NO_CONTENT);

    // On SQLite every module shares the database: analytics' store reaches depot's tables.
    let mut tx = app.store.begin().await.expect("tx");
    query(
        "INSERT INTO depot_bots (id, status, shopping_id, instance, last_seen)
         VALUES ('ghost', 'busy', ?, 'a-dead-depot-process', '2000-01-01T00:00:00.000Z')",
    )
    .bind(id.as_str())
    .execute(Conn::of(&mut *tx).expect("SQL"))
    .await
    .expect("insert");
    tx.commit().await.expect("commit");

    support::eventually("the ghost's list is available again", || async {
        let now = support::admin_get(t, &format!("/api/depot/shopping/{id}")).await;
        now["status"] == "available" && now["botId"].is_null()
    })
    .await;
    let ghost = support::admin_get(t, "/api/depot/bots").await;
    assert_eq!((ghost[0]["id"].as_str(), ghost[0]["status"].as_str()), (Some("ghost"), Some("offline")), "{ghost}");
    assert!(ghost[0]["shoppingId"].is_null(), "{ghost}");

    let mut events = app
        .broker
        .subscribe(SubscribeOptions::new(EVENT_TOPIC, "test").start(StartFrom::Beginning))
        .await
        .expect("subscribe");
    let released = loop {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("in time")
            .expect("a message");
        let event = ShoppingListIntegrationEvent::decode(&d.message.name, &d.message.payload).expect("decodes");
        d.ack().await.expect("ack");
        if let ShoppingListIntegrationEvent::Released(e) = event {
            break e;
        }
    };
    assert_eq!((released.id.as_str(), released.bot_id.as_str()), (id.as_str(), "ghost"));
    app.stop().await;
}
