//! The customers domain: `Customer`. Pure: no I/O.

use herald::Event;
use herald::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

/// A customer registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    pub name: String,
    pub sms_number: String,
}
impl Event for CustomerRegistered {
    const NAME: &'static str = "customers.CustomerRegistered.v1";
}

/// The SMS number changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerSmsChanged {
    pub sms_number: String,
}
impl Event for CustomerSmsChanged {
    const NAME: &'static str = "customers.CustomerSmsChanged.v1";
}

/// The customer was enabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerEnabled {}
impl Event for CustomerEnabled {
    const NAME: &'static str = "customers.CustomerEnabled.v1";
}

/// The customer was disabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerDisabled {}
impl Event for CustomerDisabled {
    const NAME: &'static str = "customers.CustomerDisabled.v1";
}

/// The customer was authorized to order (changes nothing; not published).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerAuthorized {}
impl Event for CustomerAuthorized {
    const NAME: &'static str = "customers.CustomerAuthorized.v1";
}

herald::event_set! {
    /// What happens to a customer.
    #[derive(Clone, Debug, PartialEq)]
    pub enum CustomerEvent {
        Registered(CustomerRegistered),
        SmsChanged(CustomerSmsChanged),
        Enabled(CustomerEnabled),
        Disabled(CustomerDisabled),
        Authorized(CustomerAuthorized),
    }
}

/// What can be asked of a customer.
#[derive(Clone, Debug)]
pub enum CustomerCommand {
    Register { name: String, sms_number: String },
    ChangeSms { sms_number: String },
    Enable,
    Disable,
    Authorize,
}

/// Why a customer refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("the customer name must not be blank")]
    BlankName,
    #[error("the SMS number must not be blank")]
    BlankSmsNumber,
    #[error("the SMS number may hold only digits, spaces, '+', '-', '(' and ')', with 3 to 20 digits")]
    InvalidSmsNumber,
    #[error("the customer already exists")]
    AlreadyExists,
    #[error("customer not found")]
    NotFound,
    #[error("the customer is already enabled")]
    AlreadyEnabled,
    #[error("the customer is already disabled")]
    AlreadyDisabled,
    #[error("the customer is disabled")]
    Disabled,
}

/// A customer of the mall.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Whether it registered (a fresh aggregate has not).
    pub exists: bool,
    pub name: String,
    pub sms_number: String,
    /// Whether it may order.
    pub enabled: bool,
}

/// A trimmed SMS number: digits and the usual punctuation, 3 to 20 digits.
fn sms_number(value: &str) -> Result<String, CustomerError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(CustomerError::BlankSmsNumber);
    }
    let allowed = value.chars().all(|c| c.is_ascii_digit() || " +-()".contains(c));
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if !allowed || !(3..=20).contains(&digits) {
        return Err(CustomerError::InvalidSmsNumber);
    }
    Ok(value.to_owned())
}

impl Aggregate for Customer {
    const TYPE: &'static str = "customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;

    fn handle(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, CustomerError> {
        if let CustomerCommand::Register { name, sms_number: sms } = command {
            if self.exists {
                return Err(CustomerError::AlreadyExists);
            }
            let name = name.trim();
            if name.is_empty() {
                return Err(CustomerError::BlankName);
            }
            return Ok(vec![CustomerRegistered { name: name.to_owned(), sms_number: sms_number(&sms)? }.into()]);
        }
        if !self.exists {
            return Err(CustomerError::NotFound);
        }
        match command {
            CustomerCommand::Register { .. } => Err(CustomerError::AlreadyExists),
            CustomerCommand::ChangeSms { sms_number: sms } => {
                Ok(vec![CustomerSmsChanged { sms_number: sms_number(&sms)? }.into()])
            }
            CustomerCommand::Enable if self.enabled => Err(CustomerError::AlreadyEnabled),
            CustomerCommand::Enable => Ok(vec![CustomerEnabled {}.into()]),
            CustomerCommand::Disable if !self.enabled => Err(CustomerError::AlreadyDisabled),
            CustomerCommand::Disable => Ok(vec![CustomerDisabled {}.into()]),
            CustomerCommand::Authorize if !self.enabled => Err(CustomerError::Disabled),
            CustomerCommand::Authorize => Ok(vec![CustomerAuthorized {}.into()]),
        }
    }

    fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::Registered(e) => {
                self.exists = true;
                self.enabled = true;
                self.name.clone_from(&e.name);
                self.sms_number.clone_from(&e.sms_number);
            }
            CustomerEvent::SmsChanged(e) => self.sms_number.clone_from(&e.sms_number),
            CustomerEvent::Enabled(_) => self.enabled = true,
            CustomerEvent::Disabled(_) => self.enabled = false,
            CustomerEvent::Authorized(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::aggregate::testing::AggregateTest;

    use super::*;

    fn registered() -> CustomerEvent {
        CustomerRegistered { name: "Ada".into(), sms_number: "+44 555 0100".into() }.into()
    }

    fn register(name: &str, sms: &str) -> CustomerCommand {
        CustomerCommand::Register { name: name.into(), sms_number: sms.into() }
    }

    #[test]
    fn a_customer_registers_with_a_name_and_an_sms_number() {
        AggregateTest::<Customer>::given_nothing().when(register(" Ada ", "+44 555 0100")).then_events([registered()]);
        AggregateTest::<Customer>::given_nothing()
            .when(register("", "555"))
            .then_error_contains("name must not be blank");
        AggregateTest::<Customer>::given_nothing().when(register("Ada", " ")).then_error_contains("must not be blank");
        AggregateTest::<Customer>::given_nothing().when(register("Ada", "call me")).then_error_contains("only digits");
        AggregateTest::<Customer>::given([registered()])
            .when(register("Ada", "555"))
            .then_error_contains("already exists");
    }

    #[test]
    fn a_registered_customer_starts_enabled_and_is_authorized() {
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::Authorize)
            .then_events([CustomerAuthorized {}.into()]);
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::Enable)
            .then_error_contains("already enabled");
    }

    #[test]
    fn a_disabled_customer_is_not_authorized_until_enabled_again() {
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::Disable)
            .then_events([CustomerDisabled {}.into()]);
        AggregateTest::<Customer>::given([registered(), CustomerDisabled {}.into()])
            .when(CustomerCommand::Authorize)
            .then_error_contains("disabled");
        AggregateTest::<Customer>::given([registered(), CustomerDisabled {}.into()])
            .when(CustomerCommand::Disable)
            .then_error_contains("already disabled");
        AggregateTest::<Customer>::given([registered(), CustomerDisabled {}.into()])
            .when(CustomerCommand::Enable)
            .then_events([CustomerEnabled {}.into()]);
    }

    #[test]
    fn the_sms_number_changes_to_a_valid_one() {
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::ChangeSms { sms_number: " 555-0199 ".into() })
            .then_events([CustomerSmsChanged { sms_number: "555-0199".into() }.into()]);
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::ChangeSms { sms_number: "".into() })
            .then_error_contains("must not be blank");
    }

    #[test]
    fn an_unknown_customer_is_not_found() {
        AggregateTest::<Customer>::given_nothing().when(CustomerCommand::Authorize).then_error_contains("not found");
    }
}
