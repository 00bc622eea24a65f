//! [`Value`]: the dynamically typed payload of a switch.

use std::any::Any;
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
    inner: Box<dyn Any>,
}

impl Value {
    /// Wraps `value`. A `Value` passed in is returned as it is, not nested.
    #[inline]
    pub fn new<T: Any>(value: T) -> Value {
        let mut slot = Some(value);
        if let Some(already) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Value>>() {
            return already.take().expect("slot was just filled");
        }
        Value {
            inner: Box::new(slot.expect("slot was just filled")),
        }
    }

    /// The unit value, `()`; it does not allocate.
    #[inline]
    pub fn unit() -> Value {
        Value::new(())
    }

    /// Is the value a `T`?
    #[inline]
    pub fn is<T: Any>(&self) -> bool {
        self.inner.is::<T>()
    }

    /// Is the value `()`?
    #[inline]
    pub fn is_unit(&self) -> bool {
        self.is::<()>()
    }

    /// Takes the value out as a `T`, or gives the `Value` back if it holds another type.
    ///
    /// ```
    /// let v = greenhub::Value::new("text");
    /// let v = v.downcast::<u8>().unwrap_err(); // not a u8: we get it back
    /// assert_eq!(v.downcast::<&str>().unwrap(), "text");
    /// ```
    #[inline]
    pub fn downcast<T: Any>(self) -> Result<T, Value> {
        match self.inner.downcast::<T>() {
            Ok(boxed) => Ok(*boxed),
            Err(inner) => Err(Value { inner }),
        }
    }

    /// Borrows the value as a `T`, if it is one.
    #[inline]
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }

    /// Borrows the value mutably as a `T`, if it is one.
    #[inline]
    pub fn downcast_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.inner.downcast_mut::<T>()
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
