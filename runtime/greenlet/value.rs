//! [`Value`]: the dynamically typed payload of a switch.

use std::any::{Any, TypeId};
use std::fmt;

/// A value passed by [`Greenlet::switch`](crate::Greenlet::switch), like a Python object:
/// any `'static` type, downcast by the receiver.
///
/// Wrapping `()` (or any zero-sized type) does not allocate, so the common
/// `g.switch(())` costs no heap traffic.
///
/// # Examples
///
/// ```
/// use greenhub::Value;
///
/// let v = Value::new(42_u32);
/// assert!(v.is::<u32>());
/// assert_eq!(v.downcast::<u32>().unwrap(), 42);
///
/// // Wrapping a Value does not nest it.
/// let v = Value::new(Value::new("hi"));
/// assert_eq!(v.downcast_ref::<&str>(), Some(&"hi"));
/// ```
pub struct Value {
    /// The boxed value; `None` is `()` (so that the commonest switch moves no pointer).
    /// Never `Some` of a `()`.
    inner: Option<Box<dyn Any>>,
}

/// Is `T` the unit type?
#[inline(always)]
fn is_unit_type<T: Any>() -> bool {
    TypeId::of::<T>() == TypeId::of::<()>()
}

impl Value {
    /// Wraps `value`. A `Value` passed in is returned as it is, not nested.
    #[inline]
    pub fn new<T: Any>(value: T) -> Value {
        if is_unit_type::<T>() {
            return Value { inner: None };
        }
        let mut slot = Some(value);
        if let Some(already) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Value>>() {
            return already.take().expect("slot was just filled");
        }
        Value {
            inner: Some(Box::new(slot.expect("slot was just filled"))),
        }
    }

    /// The unit value, `()`; it does not allocate.
    #[inline]
    pub fn unit() -> Value {
        Value { inner: None }
    }

    /// Is the value a `T`?
    #[inline]
    pub fn is<T: Any>(&self) -> bool {
        match &self.inner {
            None => is_unit_type::<T>(),
            Some(b) => b.is::<T>(),
        }
    }

    /// Is the value `()`?
    #[inline]
    pub fn is_unit(&self) -> bool {
        self.inner.is_none()
    }

    /// Takes the value out as a `T`, or gives the `Value` back if it holds another type.
    ///
    /// # Errors
    /// The `Value` itself, unchanged, if it does not hold a `T`.
    ///
    /// ```
    /// let v = greenhub::Value::new("text");
    /// let v = v.downcast::<u8>().unwrap_err(); // not a u8: we get it back
    /// assert_eq!(v.downcast::<&str>().unwrap(), "text");
    /// ```
    #[inline]
    pub fn downcast<T: Any>(self) -> Result<T, Value> {
        match self.inner {
            // `Box<()>` does not allocate.
            None => (Box::new(()) as Box<dyn Any>)
                .downcast::<T>()
                .map(|b| *b)
                .map_err(|_| Value::unit()),
            Some(b) => match b.downcast::<T>() {
                Ok(boxed) => Ok(*boxed),
                Err(inner) => Err(Value { inner: Some(inner) }),
            },
        }
    }

    /// Borrows the value as a `T`, if it is one.
    #[inline]
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        match &self.inner {
            None => (&() as &dyn Any).downcast_ref::<T>(),
            Some(b) => b.downcast_ref::<T>(),
        }
    }

    /// Borrows the value mutably as a `T`, if it is one.
    #[inline]
    pub fn downcast_mut<T: Any>(&mut self) -> Option<&mut T> {
        match &mut self.inner {
            // Leaking a `Box<()>` allocates nothing and yields a `&'static mut ()`.
            None => (Box::leak(Box::new(())) as &mut dyn Any).downcast_mut::<T>(),
            Some(b) => b.downcast_mut::<T>(),
        }
    }

    /// The value's box as a raw pointer (`None` for `()`), for the switch mailbox;
    /// [`Value::from_raw`] takes it back.
    #[inline]
    pub(crate) fn into_raw(self) -> Option<*mut dyn Any> {
        self.inner.map(Box::into_raw)
    }

    /// Rebuilds a `Value` from [`Value::into_raw`].
    ///
    /// # Safety
    /// `raw` must come from `Value::into_raw` and not have been rebuilt since.
    #[inline]
    pub(crate) unsafe fn from_raw(raw: Option<*mut dyn Any>) -> Value {
        Value {
            // SAFETY: per the contract, `raw` is a `Box<dyn Any>` given up by `into_raw`
            // and owned by nobody else.
            inner: raw.map(|p| unsafe { Box::from_raw(p) }),
        }
    }
}

impl Default for Value {
    fn default() -> Self {
        Value::unit()
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unit() {
            f.write_str("Value(())")
        } else {
            f.write_str("Value(..)")
        }
    }
}
